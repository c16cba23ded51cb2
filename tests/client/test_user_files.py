"""The user's files: an output never replaces an input, bad paths fail first, outputs land together or not at all."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarches.client.cli import app
from fedarches.shared._io import OutputSet, staged_outputs
from fedarches.shared.errors import OutputPathError
from fedarches.shared.paths import check_outputs

runner = CliRunner()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _map(query: Path, out: Path, reference: Path, trust: Path, *extra: str):
    args = ["map", str(query), "--reference", str(reference), "--trust", str(trust), "--out", str(out), "-q"]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture
def query(tmp_path: Path, demo_dir: Path) -> Path:
    path = tmp_path / "cells.h5ad"
    path.write_bytes((demo_dir / "lab_a.h5ad").read_bytes())
    return path


def _refused(result, message: str) -> None:
    assert result.exit_code == 14, result.output
    assert "error:" in result.output and "hint:" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output


# The reference path does not exist: were the bundle opened before the outputs are checked, these would
# fail with a bundle error (20), not 14. So each refusal also proves it comes before any reading or training.
MISSING_BUNDLE = Path("/nonexistent/bundle")


def test_out_equal_to_the_query_is_refused_and_the_query_kept(query: Path, keys) -> None:
    before = _digest(query)
    _refused(_map(query, query, MISSING_BUNDLE, keys[1]), "would replace your input")
    assert _digest(query) == before


def test_out_resolving_to_the_query_through_a_link_or_dots_is_refused(query: Path, keys, tmp_path: Path) -> None:
    link = tmp_path / "link.h5ad"
    link.symlink_to(query)
    hard = tmp_path / "hard.h5ad"
    os.link(query, hard)
    sub = tmp_path / "sub"
    sub.mkdir()
    for out in (link, hard, sub / ".." / query.name):
        _refused(_map(query, out, MISSING_BUNDLE, keys[1]), "would replace your input")
    _refused(_map(query, tmp_path / "x.h5ad", MISSING_BUNDLE, keys[1], "--adapter-out", str(hard)), "--adapter-out")


def test_out_that_is_a_directory_or_under_a_file_or_unwritable_is_refused(query: Path, keys, tmp_path: Path) -> None:
    _refused(_map(query, tmp_path, MISSING_BUNDLE, keys[1]), "is a directory; it must be a file")
    _refused(_map(query, query / "out.h5ad", MISSING_BUNDLE, keys[1]), "is a regular file, not a directory")
    _refused(_map(query, Path("/proc/self/annotated.h5ad"), MISSING_BUNDLE, keys[1]), "cannot be written")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    _refused(_map(query, tmp_path / "o.h5ad", MISSING_BUNDLE, keys[1], "--plots-dir", str(a_file)), "not a directory")
    _refused(_map(query, tmp_path / "o.h5ad", MISSING_BUNDLE, keys[1], "--plots-dir", str(query)), "replace your input")


def test_outputs_inside_the_bundle_or_clashing_with_each_other_are_refused(query: Path, keys, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _refused(_map(query, bundle / "annotated.h5ad", bundle, keys[1]), "inside the input directory")
    same = tmp_path / "same.json"
    twice = ("--adapter-out", str(same), "--stats-out", str(same))
    result = _map(query, tmp_path / "o.h5ad", MISSING_BUNDLE, keys[1], *twice)
    _refused(result, "name the same place")
    assert not list(tmp_path.glob(".fedarches-write-test*"))  # the writability probe leaves nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused(query: Path, keys, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    _refused(_map(query, locked / "o.h5ad", MISSING_BUNDLE, keys[1]), "cannot be written")


def test_join_refuses_an_out_dir_that_would_replace_its_data(tmp_path: Path, demo_dir: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    data = out / "annotated.h5ad"  # the file join would write its annotated copy to
    data.write_bytes((demo_dir / "lab_a.h5ad").read_bytes())
    with pytest.raises(OutputPathError, match=r"annotated\.h5ad"):
        from fedarches.client.outputs import MappingOutputs

        MappingOutputs.in_directory(out).check([data], directory_option="--out")
    with pytest.raises(OutputPathError, match="is a regular file, not a directory"):
        MappingOutputs.in_directory(data).check([tmp_path / "other.h5ad"], directory_option="--out")


def test_check_outputs_accepts_new_and_existing_files(tmp_path: Path) -> None:
    existing = tmp_path / "old.h5ad"
    existing.write_bytes(b"x")
    check_outputs([tmp_path / "in.h5ad"], {"--out": existing, "--adapter-out": tmp_path / "new" / "a.npz"})
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_staged_outputs_commit_together_or_leave_nothing(tmp_path: Path) -> None:
    old = tmp_path / "a.txt"
    old.write_text("old")
    with pytest.raises(RuntimeError), staged_outputs() as staged:
        staged.file(old).write_text("new")
        staged.file(tmp_path / "deep" / "b.txt").write_text("b")
        (staged.directory(tmp_path / "plots") / "p.png").write_bytes(b"png")
        raise RuntimeError
    assert old.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporaries, no directories it made

    with staged_outputs() as staged:
        staged.file(old).write_text("new")
        (staged.directory(tmp_path / "plots") / "p.png").write_bytes(b"png")
    assert old.read_text() == "new" and (tmp_path / "plots" / "p.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "p.png", "plots"]


def test_a_failing_commit_restores_what_was_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("old first")
    outputs = OutputSet()
    outputs.file(first).write_text("new first")
    outputs.file(second).write_text("new second")
    real_replace = Path.replace

    def disk_full_on_second(self: Path, target: Path) -> Path:  # the second move fails, after the first was made
        if Path(target) == second:
            raise OSError(28, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", disk_full_on_second)
    with pytest.raises(OSError, match="No space"):
        outputs.commit()
    assert first.read_text() == "old first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt"]


def test_an_output_file_never_replaces_a_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second"
    first.write_text("old first")
    second.mkdir()
    (second / "keep").write_text("keep")
    with pytest.raises(IsADirectoryError), staged_outputs() as staged:
        staged.file(first).write_text("new first")
        staged.file(second).write_text("new second")
    assert first.read_text() == "old first" and (second / "keep").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt", "second"]
