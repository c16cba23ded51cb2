"""Each bad input: a one-line error with a hint, a non-zero exit code, no traceback, no output file."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from fedarches.client.cli import app

runner = CliRunner()


def _run(bundle, keys, query: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "map",
            str(query),
            "--reference",
            str(bundle.path),
            "--trust",
            str(keys[1]),
            "--out",
            str(out),
            "--max-epochs",
            "2",
            "-q",
            *extra,
        ],
    )


def _assert_refused(result, out: Path, code: int, message: str) -> None:
    text = result.output
    assert result.exit_code == code, text
    assert "error:" in text and "hint:" in text, text
    assert message in text, text
    assert "Traceback" not in text
    assert not out.exists()
    assert not list(out.parent.glob("*partial*"))


def _write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def _lab(demo_dir: Path) -> ad.AnnData:
    return ad.read_h5ad(demo_dir / "lab_a.h5ad")


BAD_INPUTS = {
    "log-normalized": (11, "non-integer values", lambda a: (a.layers.pop("counts"), a)[1]),
    "negative": (11, "negative values", lambda a: _set_x(a, -1.0)),
    "non-finite": (11, "NaN or infinite", lambda a: _set_x(a, np.nan)),
    "zero-cells": (11, "zero cells", lambda a: a[:0].copy()),
    "duplicate-genes": (11, "duplicate gene names", lambda a: _dupe(a)),
    "low-gene-overlap": (12, "reference genes", lambda a: _rename(a, 0.6)),
}


def _set_x(adata: ad.AnnData, value: float) -> ad.AnnData:
    counts = adata.layers["counts"].tocsr(copy=True)
    counts.data[0] = value
    adata.layers["counts"] = counts
    return adata


def _dupe(adata: ad.AnnData) -> ad.AnnData:
    names = adata.var_names.tolist()
    names[1] = names[0]
    adata.var_names = names
    return adata


def _rename(adata: ad.AnnData, share: float) -> ad.AnnData:
    n = int(adata.n_vars * share)
    adata.var_names = [f"unknown{i}" for i in range(n)] + adata.var_names[n:].tolist()
    adata.var = adata.var.drop(columns=["ensembl_id"])
    return adata


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_query_refused(case, files_bundle, keys, demo_dir, tmp_path) -> None:
    code, message, make = BAD_INPUTS[case]
    query = _write(make(_lab(demo_dir)), tmp_path / "query.h5ad")
    out = tmp_path / "out" / "annotated.h5ad"
    _assert_refused(_run(files_bundle, keys, query, out), out, code, message)


def test_batch_key_problems(files_bundle, keys, demo_dir, tmp_path) -> None:
    adata = _lab(demo_dir)
    adata.obs["plate"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("plate")] = np.nan
    query = _write(adata, tmp_path / "q.h5ad")
    out = tmp_path / "out.h5ad"
    _assert_refused(_run(files_bundle, keys, query, out, "--batch-key", "plate"), out, 11, "missing (NaN) for 3 of 210")
    _assert_refused(_run(files_bundle, keys, query, out, "--batch-key", "donor"), out, 11, "no column 'donor'")


def test_unreadable_and_truncated_files(files_bundle, keys, demo_dir, tmp_path) -> None:
    truncated = tmp_path / "truncated.h5ad"
    data = (demo_dir / "lab_a.h5ad").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.h5ad"
    _assert_refused(_run(files_bundle, keys, truncated, out), out, 11, "truncated, corrupted or not AnnData")
    text = tmp_path / "notes.h5ad"
    text.write_text("hello")
    _assert_refused(_run(files_bundle, keys, text, out), out, 11, "cannot read")
    _assert_refused(_run(files_bundle, keys, tmp_path / "absent.h5ad", out), out, 10, "does not exist")


def test_tampered_bundle_refused(files_bundle, keys, demo_dir, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(files_bundle.path, copy)
    setup = copy / "setup.json"
    setup.write_text(setup.read_text().replace("H838", "H839"))
    out = tmp_path / "out.h5ad"
    result = runner.invoke(
        app, ["map", str(demo_dir / "lab_a.h5ad"), "-r", str(copy), "--trust", str(keys[1]), "-o", str(out)]
    )
    _assert_refused(result, out, 21, "does not match the sha256")


@pytest.mark.slow
def test_low_overlap_warns_but_maps(demo_bundle, keys, demo_dir, tmp_path) -> None:
    renamed = _rename(_lab(demo_dir), 0.24)
    expected = len(set(renamed.var_names) & set(demo_bundle.var_names))
    assert 0.5 < expected / 2000 < 0.8
    query = _write(renamed, tmp_path / "q.h5ad")
    out = tmp_path / "out.h5ad"
    result = _run(demo_bundle, keys, query, out)
    assert result.exit_code == 0, result.output
    assert f"warning: the query has only {expected / 2000:.0%} of the reference genes" in result.output
    mapped = ad.read_h5ad(out)
    assert mapped.uns["fedarches"]["gene_overlap"]["n_present"] == expected


@pytest.mark.slow
def test_interrupted_write_leaves_nothing(demo_bundle, keys, demo_dir, tmp_path, monkeypatch) -> None:
    def broken_write(self, path, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_write)
    out = tmp_path / "out" / "annotated.h5ad"
    result = _run(demo_bundle, keys, demo_dir / "lab_a.h5ad", out, "--adapter-out", str(tmp_path / "adapter.npz"))
    assert result.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .h5ad, no plots, no adapter, not even out/


@pytest.mark.slow
def test_a_failure_after_the_plots_leaves_no_output_of_any_kind(demo_bundle, keys, demo_dir, tmp_path, monkeypatch):
    out = tmp_path / "annotated.h5ad"
    old_stats = tmp_path / "stats.json"
    old_stats.write_text("from an earlier run")
    adapter = tmp_path / "adapter.npz"
    adapter.mkdir()  # the adapter cannot be written: found only when every output is committed
    (adapter / "keep").write_text("the user's")
    query = tmp_path / "q.h5ad"
    query.write_bytes((demo_dir / "lab_a.h5ad").read_bytes())
    result = _run(demo_bundle, keys, query, out, "--adapter-out", str(adapter), "--stats-out", str(old_stats))
    assert result.exit_code == 14, result.output  # refused before training: an output file cannot be a directory
    adapter.rename(tmp_path / "moved")
    import fedarches.client.plots as plots

    real = plots.plot_mapping

    def plots_then_disk_full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_mapping", plots_then_disk_full)
    result = _run(demo_bundle, keys, query, out, "--adapter-out", str(adapter), "--stats-out", str(old_stats))
    assert result.exit_code == 15 and "No space left on device" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "q.h5ad", "stats.json"]
    assert old_stats.read_text() == "from an earlier run"


@pytest.mark.slow
def test_cells_without_counts_are_mapped_as_unknown_and_reported(demo_bundle, keys, demo_dir, tmp_path) -> None:
    adata = _lab(demo_dir)
    counts = adata.layers["counts"].tolil()
    counts[:5] = 0
    adata.layers["counts"] = counts.tocsr()
    out = tmp_path / "out.h5ad"
    result = _run(demo_bundle, keys, _write(adata, tmp_path / "q.h5ad"), out)
    assert result.exit_code == 0, result.output
    assert "5 of 210 cells have no counts in the reference's genes" in result.output
    mapped = ad.read_h5ad(out)
    assert mapped.obs["is_unknown"].iloc[:5].all()
    assert mapped.uns["fedarches"]["n_empty_cells"] == 5


def test_counts_in_integer_x_are_accepted(tmp_path) -> None:
    from fedarches.shared.counts import get_counts

    adata = ad.AnnData(X=sp.csr_matrix(np.array([[0, 2], [5, 0]], dtype=np.float32)))
    assert get_counts(adata)[1] == "X"
