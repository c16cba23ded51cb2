"""build-reference refuses an --out that would replace an input or a user's files, before any training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarches.server.cli import app

runner = CliRunner()


@pytest.fixture
def reference(tmp_path: Path, demo_dir: Path) -> Path:
    path = tmp_path / "reference.h5ad"
    path.write_bytes((demo_dir / "reference.h5ad").read_bytes())
    return path


def _build(reference: Path, keys, out: Path, *extra: str):
    args = ["build-reference", str(reference), "--batch-key", "batch", "--labels-key", "cell_type"]
    return runner.invoke(app, [*args, "--signing-key", str(keys[0]), "--out", str(out), "-q", *extra])


def _refused(result, message: str) -> None:
    assert result.exit_code == 14, result.output
    assert message in result.output and "hint:" in result.output and "Traceback" not in result.output


def test_out_equal_to_the_reference_is_refused_even_with_overwrite(reference: Path, keys) -> None:
    before = hashlib.sha256(reference.read_bytes()).hexdigest()
    _refused(_build(reference, keys, reference, "--overwrite"), "would replace your input")
    assert hashlib.sha256(reference.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in reference.parent.iterdir()) == ["reference.h5ad"]


def test_overwrite_never_deletes_a_directory_that_is_not_a_bundle(reference: Path, keys, tmp_path: Path) -> None:
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    _refused(_build(reference, keys, mine, "--overwrite"), "not a bundle: --overwrite would delete them")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_an_existing_out_is_refused_before_training(reference: Path, keys, tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    _refused(_build(reference, keys, tmp_path / "bundle"), "already exists")
    _refused(_build(reference, keys, tmp_path / "bundle" / ".." / "reference.h5ad"), "would replace your input")
