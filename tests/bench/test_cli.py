"""The one command line of fedarches.bench, and the thin scripts the Makefile and the documents name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedarches.bench import cli

ROOT = Path(__file__).resolve().parents[2]
DEMO_SCRIPTS = {"demo.py", "make_demo_data.py", "make_demo_citeseq.py"}
HEAVY = ("torch", "scvi", "scib_metrics", "celltypist", "ray", "jax")


def _script_command(path: Path) -> list:
    """The arguments of the ``script(...)`` call a thin entry point makes."""
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "script"
    ]
    assert len(calls) == 1, f"{path.name} should call fedarches.bench.cli.script once"
    return calls[0].args


def test_scripts_are_thin_entry_points() -> None:
    for path in sorted((ROOT / "scripts").glob("*.py")):
        if path.name in DEMO_SCRIPTS:
            continue
        text = path.read_text()
        assert "sys.path" not in text
        assert len(text.splitlines()) <= 15, f"{path.name} is not a thin entry point"
        assert ast.literal_eval(_script_command(path)[0]) in cli.COMMANDS


def test_every_script_named_in_the_makefile_and_docs_exists() -> None:
    named = set()
    for doc in [ROOT / "Makefile", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        named |= set(re.findall(r"scripts/(\w+\.py)", doc.read_text()))
    assert named
    assert not sorted(n for n in named if not (ROOT / "scripts" / n).is_file())


@pytest.mark.parametrize("command", [c for c, spec in cli.COMMANDS.items() if spec.listed])
def test_every_command_parses_its_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"python -m fedarches.bench {command}" in capsys.readouterr().out


def test_script_options_keep_their_names_and_defaults() -> None:
    parser = cli.build_parser()
    suite = parser.parse_args(["suite"])
    assert (suite.quick, suite.doc, suite.resume, suite.pbmc, suite.cellbench) == (False, True, False, True, True)
    assert suite.out == ROOT / "bench-output" / "bench"
    assert parser.parse_args(["suite", "--no-cellbench", "--no-doc"]).cellbench is False
    backends = parser.parse_args(["backends", "--threads", "1", "--quick"])
    assert (backends.threads, backends.quick, backends.out.name) == (1, True, "backends")
    membership = parser.parse_args(["membership", "--noise-multipliers", "0.1", "1", "--pbmc"])
    assert membership.noise_multipliers == [0.1, 1.0]
    assert (membership.pbmc, membership.n_models, membership.pool, membership.mc_draws) == (True, 16, "lab_c", 16)
    assert parser.parse_args(["membership"]).noise_multipliers == cli.MEMBERSHIP_NOISE
    research = parser.parse_args(["unknown-research", "build", "--datasets", "symphony", "zheng", "--force"])
    assert (research.stage, research.datasets, research.force) == ("build", ["symphony", "zheng"], True)
    assert parser.parse_args(["unknown", "H838", "A549"]).held_out == ["H838", "A549"]
    assert parser.parse_args(["privacy-utility"]).draws == 300


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    for argv in (["membership", "--n-models", "3"], ["doc", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_help_and_reports_need_nothing_heavy() -> None:
    """No torch, scvi-tools or `bench` extra for the package, its command line's help and its reports."""
    code = (
        "import sys, fedarches.bench, fedarches.bench.cli, fedarches.bench.report_suite, "
        "fedarches.bench.report_privacy, fedarches.bench.report_backends, fedarches.bench.report_unknown\n"
        "try:\n    fedarches.bench.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_runs_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedarches.bench", "--help"], capture_output=True, text=True, check=True, cwd=ROOT.parent
    )
    assert "privacy-utility" in out.stdout
    assert "worker" not in out.stdout  # the internal step runner is not listed
