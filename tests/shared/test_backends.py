"""The backend registry and interface: one place maps names to model families; nothing else names a class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedarches.shared.backends import BACKENDS, MODEL_CLASSES, backend_for, backend_for_model_class, get_backend
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.crypto import load_private_key
from fedarches.shared.errors import AdapterError, UserInputError

PACKAGE = Path(__file__).resolve().parents[2]
ROLES = ("shared", "client", "server")


def test_every_backend_has_a_unique_name_and_class() -> None:
    assert len(MODEL_CLASSES) == len(BACKENDS)
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert backend_for_model_class(backend.model_class) is backend
        assert backend.latent_key.startswith("X_")
        assert bool(backend.adapter_tensors) == backend.surgery_trains, name  # scGen: nothing trains, nothing leaves


def test_unknown_names_are_refused_with_the_supported_ones() -> None:
    with pytest.raises(UserInputError, match="no model backend 'scarches'; fedarches supports scanvi, scvi"):
        get_backend("scarches")
    with pytest.raises(UserInputError, match=r"/models/x is a LinearSCVI model; fedarches maps against SCANVI, SCVI"):
        backend_for_model_class("LinearSCVI", source="/models/x")


def test_model_classes_are_named_only_in_the_backends() -> None:
    """No role compares or looks up a model class by name: only shared/backends/ and shared/models/ spell them."""
    names = "|".join(MODEL_CLASSES)
    spelled = re.compile(rf"""["']({names})["']""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for role in ROLES
        for path in sorted((PACKAGE / role).rglob("*.py"))
        if "backends" not in path.parts and "models" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("backend", "tensor"),
    [
        ("scanvi", "z_encoder.encoder.fc_layers.Layer 0.0.weight"),
        ("scanvi", "decoder.px_decoder.fc_layers.Layer 1.0.weight"),
        ("scvi", "px_r"),
    ],
)
def test_the_allow_list_admits_batch_columns(backend: str, tensor: str) -> None:
    get_backend(backend).check_adapter_tensors([tensor])


@pytest.mark.parametrize("tensor", ["classifier.classifier.0.weight", "z_encoder.mean_encoder.weight", "px_r.extra"])
def test_the_allow_list_refuses_any_other_tensor(tensor: str) -> None:
    with pytest.raises(AdapterError, match=f"grows tensors \\['{re.escape(tensor)}'\\] that the scanvi backend"):
        get_backend("scanvi").check_adapter_tensors(["px_r", tensor])


def test_a_bundle_records_its_backend(toy_contents, keys, tmp_path) -> None:
    write_bundle(tmp_path / "b", toy_contents, load_private_key(keys[0]))
    bundle = ReferenceBundle.open(tmp_path / "b", keys[1])
    assert bundle.setup["backend"] == "scanvi"
    assert backend_for(bundle) is get_backend("scanvi")
    assert bundle.summary()["backend"] == "scanvi"
    assert bundle.protein_names == []


def test_the_backends_command_lists_every_backend() -> None:
    from fedarches.server.cli import app

    result = CliRunner().invoke(app, ["backends"])
    assert result.exit_code == 0, result.output
    for name, backend in BACKENDS.items():
        assert name in result.output and backend.latent_key in result.output
    import typer.main

    build = typer.main.get_command(app).commands["build-reference"]  # type: ignore[attr-defined]
    (model,) = [p for p in build.params if p.name == "model"]
    assert list(model.type.choices) == list(BACKENDS)
    assert model.default == "scanvi"


def _citeseq_mudata(demo_dir: Path):
    import anndata as ad
    import mudata as md
    import pandas as pd

    adata = ad.read_h5ad(demo_dir / "citeseq_reference.h5ad")
    proteins = adata.obsm.pop("protein_expression")
    prot = ad.AnnData(
        X=proteins.to_numpy(), obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=proteins.columns)
    )
    rna = adata.copy()
    top_obs = rna.obs[["cell_type"]].copy()
    rna.obs = rna.obs.drop(columns=["cell_type"])
    mdata = md.MuData({"rna": rna, "prot": prot})
    mdata.obs["cell_type"] = top_obs["cell_type"].to_numpy()
    return mdata, proteins


def test_a_mudata_reference_becomes_rna_with_proteins_and_its_top_level_columns(demo_dir: Path) -> None:
    import numpy as np

    mdata, proteins = _citeseq_mudata(demo_dir)
    reference = get_backend("totalvi").reference_data(mdata, "batch", "cell_type")
    assert reference.n_obs == mdata.n_obs and list(reference.var_names) == list(mdata.mod["rna"].var_names)
    assert list(reference.obsm["protein_expression"].columns) == list(proteins.columns)
    np.testing.assert_array_equal(reference.obsm["protein_expression"].to_numpy(), proteins.to_numpy())
    assert "cell_type" in reference.obs and "batch" in reference.obs
    assert "cell_type" not in mdata.mod["rna"].obs and "protein_expression" not in mdata.mod["rna"].obsm  # unchanged
    rna_only = get_backend("scanvi").reference_data(mdata, "batch", "cell_type")
    assert "protein_expression" not in rna_only.obsm and "cell_type" in rna_only.obs


def test_a_protein_model_refuses_a_reference_without_proteins(demo_dir: Path) -> None:
    mdata, _ = _citeseq_mudata(demo_dir)
    del mdata.mod["prot"]
    reference = get_backend("totalvi").reference_data(mdata, "batch", "cell_type")
    with pytest.raises(UserInputError, match=r"the reference has no obsm\['protein_expression'\]"):
        get_backend("totalvi").check_reference(reference)


def test_the_registry_keys_read_without_scvi_tools_are_scvi_tools_own() -> None:
    from scvi import REGISTRY_KEYS

    from fedarches.shared.backends import base

    assert (base.BATCH_KEY, base.LABELS_KEY) == (REGISTRY_KEYS.BATCH_KEY, REGISTRY_KEYS.LABELS_KEY)
