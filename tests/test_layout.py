"""The package's boundaries: ``shared`` knows no role, and the two roles never import each other."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
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


@pytest.mark.parametrize("role", ["fedarches.client", "fedarches.server", "fedarches.shared"])
def test_each_role_exposes_its_python_api(role: str) -> None:
    module = importlib.import_module(role)
    assert sorted(set(module.__all__) - {"__version__"}) == sorted(module._API)
    for name in module._API:
        assert getattr(module, name) is getattr(importlib.import_module(f"{role}.{module._API[name]}"), name)
    with pytest.raises(AttributeError, match="no attribute"):
        module.not_a_name


def test_importing_the_roles_loads_neither_torch_nor_scvi_tools() -> None:
    code = "import sys, fedarches.client, fedarches.server; print(sorted({'torch', 'scvi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]"


def test_the_import_contracts_hold() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]); `make test` runs them before pytest as well."""
    linter = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(linter), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout
