"""The package's boundaries: ``shared`` knows no role, and the two roles never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "shared": ("fedarches.client", "fedarches.server"),
    "client": ("fedarches.server",),
    "server": ("fedarches.client",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_role_may(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imports(path)
        if module.startswith(FORBIDDEN[package])
    ]
    assert offenders == []


ROLE_NAMES = ("fedarches-client", "fedarches-server", "fedarches.client", "fedarches.server")


def test_shared_names_no_role() -> None:
    """Not even in a hint or a docstring: what shared/ says holds for whichever role runs it."""
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}"
        for path in sorted((ROOT / "shared").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if any(name in line for name in ROLE_NAMES)
    ]
    assert offenders == [], "shared/ names a role (a command or module of the client or server):\n" + "\n".join(
        offenders
    )
