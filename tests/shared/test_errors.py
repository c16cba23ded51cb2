from __future__ import annotations

import pytest

from fedarches.shared import errors


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_exit_codes_unique_and_hinted() -> None:
    classes = [c for c in _subclasses(errors.FedarchesError) if c.__module__.startswith("fedarches")]
    codes = [c.exit_code for c in classes]
    assert len(codes) == len(set(codes)), codes
    assert all(c.hint for c in classes)


def test_subclass_must_set_code_and_hint() -> None:
    with pytest.raises(TypeError, match="exit_code and hint"):
        type("Broken", (errors.FedarchesError,), {"hint": "x"})


def test_every_error_class_is_in_the_help_table_and_the_readme() -> None:
    import re
    from pathlib import Path

    import fedarches.client.mapping  # defines ReferenceChangedError
    import fedarches.server.cli  # noqa: F401 - imports every module that defines an error

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", readme, flags=re.MULTILINE))
    classes = [c for c in _subclasses(errors.FedarchesError) if c.__module__.startswith("fedarches")]
    for cls in [errors.FedarchesError, *classes]:
        assert rows.get(str(cls.exit_code)) == cls.__name__, f"README's exit-code table lacks {cls.__name__}"
        if cls.__module__ == "fedarches.shared.errors":
            assert errors.EXIT_CODE_HELP[cls.exit_code] == cls.hint
