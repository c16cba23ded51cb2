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
