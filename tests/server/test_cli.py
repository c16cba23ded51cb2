"""The maintainer's commands, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
from typer.testing import CliRunner

from fedarches.server.cli import app
from fedarches.shared.bundle import ReferenceBundle

runner = CliRunner()


def test_keygen(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle-signing.key").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keygen", "--out", str(tmp_path)])
    assert again.exit_code == 10 and "refusing to overwrite" in again.output


def test_build_reference_bad_keys(tmp_path: Path, demo_dir: Path, keys) -> None:
    result = runner.invoke(
        app,
        [
            "build-reference",
            str(demo_dir / "reference.h5ad"),
            "--batch-key",
            "plate",
            "--labels-key",
            "cell_type",
            "--signing-key",
            str(keys[0]),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 10 and "no column 'plate'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_import_reference_from_saved_scvi_model(tmp_path: Path, files_bundle, demo_dir: Path, keys) -> None:
    model_dir = files_bundle.write_model_dir(tmp_path / "scvi_model")  # scvi-tools' model.save() layout
    out = tmp_path / "imported"
    result = runner.invoke(
        app,
        [
            "import-reference",
            str(model_dir),
            "--signing-key",
            str(keys[0]),
            "--out",
            str(out),
            "--reference-data",
            str(demo_dir / "reference.h5ad"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    bundle = ReferenceBundle.open(out, keys[1])
    assert bundle.model_class == "SCANVI"
    assert bundle.var_names == files_bundle.var_names
    assert bundle.label_categories == files_bundle.label_categories
    reference = ad.read_h5ad(demo_dir / "reference.h5ad", backed="r")
    assert bundle.embedding["latent"].shape == (reference.n_obs, files_bundle.embedding["latent"].shape[1])


@pytest.mark.slow
@pytest.mark.e2e
def test_build_and_map_from_the_command_line(tmp_path: Path, demo_dir: Path) -> None:
    bin_dir = Path(sys.executable).parent

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, check=False, timeout=600
        )

    assert run("fedarches-server", "keygen", "--out", str(tmp_path / "keys")).returncode == 0
    built = run(
        "fedarches-server",
        "build-reference",
        str(demo_dir / "reference.h5ad"),
        "--batch-key",
        "batch",
        "--labels-key",
        "cell_type",
        "--signing-key",
        str(tmp_path / "keys/bundle-signing.key"),
        "--out",
        str(tmp_path / "bundle"),
        "--max-epochs",
        "20",
        "--scanvi-max-epochs",
        "3",
        "-q",
    )
    assert built.returncode == 0, built.stderr
    mapped = run(
        "fedarches-client",
        "map",
        str(demo_dir / "lab_b.h5ad"),
        "--reference",
        str(tmp_path / "bundle"),
        "--trust",
        str(tmp_path / "keys/bundle-signing.pub"),
        "--out",
        str(tmp_path / "lab_b.h5ad"),
        "--max-epochs",
        "5",
        "--lab-name",
        "lab_b",
        "--threads",
        "1",
        "-q",
    )
    assert mapped.returncode == 0, mapped.stderr
    assert "predicted cell types (240 cells)" in mapped.stdout
    annotated = ad.read_h5ad(tmp_path / "lab_b.h5ad")
    assert {"predicted_cell_type", "prediction_confidence", "is_low_confidence"} <= set(annotated.obs)
    for png in ("reference_embedding.png", "confidence_histogram.png"):
        data = (tmp_path / "lab_b_plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.slow
def test_import_reference_of_a_plain_scvi_tools_scvi_model(tmp_path: Path, demo_dir: Path, keys) -> None:
    """A model a maintainer trained with scvi-tools alone becomes a bundle with kNN labels and the Unknown call."""
    import scvi

    from fedarches.client.mapping import MappingOptions, map_query

    reference = ad.read_h5ad(demo_dir / "reference.h5ad")
    reference.X = reference.layers["counts"]
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
    model = scvi.model.SCVI(reference, n_latent=8, use_layer_norm="both", use_batch_norm="none", encode_covariates=True)
    model.train(max_epochs=40, enable_progress_bar=False)
    model.save(tmp_path / "saved", save_anndata=True)
    result = runner.invoke(
        app, ["import-reference", str(tmp_path / "saved"), "--signing-key", str(keys[0]), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.output
    assert "SCVI (--model scvi)" in result.output
    bundle = ReferenceBundle.open(tmp_path / "b", keys[1])
    assert bundle.setup["backend"] == "scvi" and bundle.reference_summary is not None
    lab = ad.read_h5ad(demo_dir / "lab_b.h5ad")
    map_query(lab, bundle, lab_name="lab_b", options=MappingOptions(max_epochs=20, progress_bar=False))
    assert lab.obsm["X_scVI"].shape == (lab.n_obs, 8)
    assert (lab.obs["predicted_cell_type"].astype(str) == lab.obs["cell_type"].astype(str)).mean() > 0.8
    assert lab.obs["is_unknown"].mean() < 0.2


@pytest.mark.slow
def test_import_reference_refuses_a_model_class_without_a_backend(tmp_path: Path, files_bundle, keys) -> None:
    from fedarches.shared.weights import load_model_dict, model_dict_bytes

    saved = load_model_dict(files_bundle.model_bytes(), source="test")
    saved["attr_dict"]["registry_"]["model_name"] = "LinearSCVI"
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "model.pt").write_bytes(model_dict_bytes(saved))
    result = runner.invoke(
        app, ["import-reference", str(tmp_path / "saved"), "--signing-key", str(keys[0]), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 10, result.output
    assert "is a LinearSCVI model; fedarches maps against SCANVI, SCVI" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_import_reference_of_a_totalvi_model_takes_its_labels_from_the_reference_data(
    tmp_path: Path, demo_dir: Path, keys
) -> None:
    """totalVI stores no cell types: --labels-key names them in the reference data; the proteins come along."""
    import scvi

    reference = ad.read_h5ad(demo_dir / "citeseq_reference.h5ad")
    reference.X = reference.layers["counts"]
    scvi.settings.seed = 0
    scvi.model.TOTALVI.setup_anndata(reference, batch_key="batch", protein_expression_obsm_key="protein_expression")
    model = scvi.model.TOTALVI(
        reference, n_latent=8, use_layer_norm="both", use_batch_norm="none", encode_covariates=True
    )
    model.train(max_epochs=10, enable_progress_bar=False)
    model.save(tmp_path / "saved", save_anndata=True)
    args = ["import-reference", str(tmp_path / "saved"), "--signing-key", str(keys[0]), "--out", str(tmp_path / "b")]
    without = runner.invoke(app, args)
    assert without.exit_code == 10 and "records no cell types" in without.output, without.output
    result = runner.invoke(app, [*args, "--labels-key", "cell_type"])
    assert result.exit_code == 0, result.output
    bundle = ReferenceBundle.open(tmp_path / "b", keys[1])
    assert bundle.setup["backend"] == "totalvi"
    assert bundle.protein_names == list(reference.obsm["protein_expression"].columns)
    assert bundle.label_categories == sorted(reference.obs["cell_type"].dropna().astype(str).unique())
    assert bundle.reference_summary is not None and bundle.embedding["latent"].shape[1] == 8
