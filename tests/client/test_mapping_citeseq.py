"""Real CITE-seq surgery: totalVI and totalANVI references on ECCITE-seq PBMCs, labs with proteins, RNA only, MuData.

The reference is three hashtag samples of ``data/demo/citeseq_reference.h5ad``; the lab is the fourth
(``citeseq_lab.h5ad``), whose measured proteins are hidden for the RNA-only mappings and then score
the imputed ones. Cell types are coarse protein-marker gates (see ``scripts/make_demo_citeseq.py``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

from fedarches.client.mapping import MappingOptions, map_query
from fedarches.shared import crypto
from fedarches.shared.backends import backend_for
from fedarches.shared.bundle import ReferenceBundle, write_bundle

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
OPTIONS = MappingOptions(max_epochs=40, seed=0, threads=1, progress_bar=False)
# Markers whose imputation from RNA is scored; the first group is clear in this panel, the second
# (CD3, CD14: weak antibodies here, 99th percentile of arcsinh(ADT/5) near 2.2) must still be positive.
CLEAR_MARKERS = ("CD19", "MHCII (HLA-DR)", "CD11b", "CD2", "CD8", "CD4")
WEAK_MARKERS = ("CD3", "CD14")


def _build(model: str, tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> ReferenceBundle:
    from fedarches.server.reference import ReferenceOptions, build_reference

    reference = ad.read_h5ad(DEMO / "citeseq_reference.h5ad")
    contents = build_reference(
        reference,
        batch_key="batch",
        labels_key="cell_type",
        options=ReferenceOptions(model=model, max_epochs=50, scanvi_max_epochs=10, progress_bar=False, threads=1),
    )
    path = write_bundle(tmp_path_factory.mktemp(model) / "ref", contents, crypto.load_private_key(keys[0]))
    return ReferenceBundle.open(path, keys[1])


@pytest.fixture(scope="module")
def totalvi_bundle(tmp_path_factory, keys) -> ReferenceBundle:
    return _build("totalvi", tmp_path_factory, keys)


@pytest.fixture(scope="module")
def totalanvi_bundle(tmp_path_factory, keys) -> ReferenceBundle:
    return _build("totalanvi", tmp_path_factory, keys)


@pytest.fixture(scope="module")
def lab() -> ad.AnnData:
    return ad.read_h5ad(DEMO / "citeseq_lab.h5ad")


def _rna_only(lab: ad.AnnData) -> ad.AnnData:
    query = lab.copy()
    del query.obsm["protein_expression"]
    return query


def _as_mudata(lab: ad.AnnData) -> md.MuData:
    """The lab in scvi-tools' MuData layout: RNA in 'rna', ADT counts in 'prot' (layers['counts'])."""
    proteins = lab.obsm["protein_expression"]
    prot = ad.AnnData(
        X=np.log1p(proteins.to_numpy(dtype=np.float32)),  # normalized, as pipelines leave it: counts are in the layer
        obs=pd.DataFrame(index=lab.obs_names),
        var=pd.DataFrame(index=proteins.columns),
        layers={"counts": proteins.to_numpy(dtype=np.float32)},
    )
    return md.MuData({"rna": _rna_only(lab), "prot": prot})


def _map(data, bundle: ReferenceBundle):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = map_query(data, bundle, lab_name="lab", options=OPTIONS)
    return data, result, caught


@pytest.fixture(scope="module")
def totalvi_mapped(totalvi_bundle, lab) -> dict[str, tuple]:
    """The lab mapped (a) with its proteins, (b) RNA only, (c) as a MuData with 'rna' and 'prot'."""
    return {
        "proteins": _map(lab.copy(), totalvi_bundle),
        "rna_only": _map(_rna_only(lab), totalvi_bundle),
        "mudata": _map(_as_mudata(lab), totalvi_bundle),
    }


@pytest.fixture(scope="module")
def totalanvi_mapped(totalanvi_bundle, lab) -> tuple:
    return _map(_rna_only(lab), totalanvi_bundle)


def _all_mapped(totalvi_mapped, totalanvi_mapped, totalvi_bundle, totalanvi_bundle):
    for data, result, _ in totalvi_mapped.values():
        yield data, result, totalvi_bundle
    yield totalanvi_mapped[0], totalanvi_mapped[1], totalanvi_bundle


def _accuracy(predicted: pd.Series, truth: pd.Series) -> float:
    known = truth.notna().to_numpy()
    return float((predicted.astype(str).to_numpy()[known] == truth.astype(str).to_numpy()[known]).mean())


def test_bundles_record_backend_and_proteins(totalvi_bundle, totalanvi_bundle, lab) -> None:
    for bundle, name in ((totalvi_bundle, "totalvi"), (totalanvi_bundle, "totalanvi")):
        assert backend_for(bundle).name == name
        assert bundle.protein_names == list(lab.obsm["protein_expression"].columns)
        assert bundle.label_categories == ["B", "CD4 T", "CD8 T", "Myeloid", "NK"]
        assert bundle.reference_summary is not None
        assert bundle.embedding is not None
    assert totalvi_bundle.model_class == "TOTALVI"
    assert totalanvi_bundle.model_class == "TOTALANVI"


def test_writes_totalvi_keys_and_denoised_proteins(totalvi_mapped, totalanvi_mapped, totalvi_bundle, lab) -> None:
    for mode, (data, result, _) in {**totalvi_mapped, "totalanvi": totalanvi_mapped}.items():
        assert data.obsm["X_totalVI"].shape == (lab.n_obs, 10), mode
        assert data.obsm["X_totalVI"].dtype == np.float32
        denoised = data.obsm["denoised_protein"]
        assert isinstance(denoised, pd.DataFrame)
        assert list(denoised.columns) == totalvi_bundle.protein_names
        assert list(denoised.index) == list(lab.obs_names)
        assert np.isfinite(denoised.to_numpy()).all() and (denoised.to_numpy() >= 0).all()
        assert set(data.obs["predicted_cell_type"].cat.categories) == {"B", "CD4 T", "CD8 T", "Myeloid", "NK"}
        assert data.obs["is_unknown"].dtype == bool
        assert data.obsm["X_ref_umap"].shape == (lab.n_obs, 2)
        assert result.latent_key == "X_totalVI"
        info = data.uns["fedarches"]
        assert info["reference_weights_unchanged"] is True
        assert info["backend"] == ("totalanvi" if mode == "totalanvi" else "totalvi")
    reports = {mode: data.uns["fedarches"]["inputs"] for mode, (data, _, _) in totalvi_mapped.items()}
    assert reports["proteins"]["n_present"] == 48 and reports["proteins"]["rna_only"] is False
    assert reports["proteins"]["source"] == "obsm['protein_expression']"
    assert reports["rna_only"]["rna_only"] is True and reports["rna_only"]["n_present"] == 0
    assert len(reports["rna_only"]["missing"]) == reports["rna_only"]["n_reference_proteins"] == 48
    assert reports["mudata"]["source"] == "mod['prot'].layers['counts']"
    assert totalanvi_mapped[0].uns["fedarches"]["inputs"]["rna_only"] is True


def test_predictions_agree_with_the_protein_gates(totalvi_mapped, totalanvi_mapped, lab) -> None:
    """Gated on proteins, predicted from RNA (and proteins): coarse types agree for most cells."""
    accuracies = {mode: _accuracy(d.obs["predicted_cell_type"], lab.obs["cell_type"]) for mode, (d, _, _) in
                  totalvi_mapped.items() if mode != "mudata"}  # fmt: skip
    accuracies["totalanvi_rna_only"] = _accuracy(totalanvi_mapped[0].obs["predicted_cell_type"], lab.obs["cell_type"])
    print("accuracy against protein gates:", {k: round(v, 3) for k, v in accuracies.items()})
    assert min(accuracies.values()) > 0.6, accuracies
    assert totalanvi_mapped[0].obs["is_unknown"].mean() < 0.25


def test_reference_weights_unchanged_and_adapter_on_allow_list(
    totalvi_mapped, totalanvi_mapped, totalvi_bundle, totalanvi_bundle
) -> None:
    for data, result, bundle in _all_mapped(totalvi_mapped, totalanvi_mapped, totalvi_bundle, totalanvi_bundle):
        backend = backend_for(bundle)
        reference = bundle.reference_state()
        query = {k: v.detach().cpu().numpy() for k, v in result.model.module.state_dict().items()}
        grown = {n for n in reference if query[n].shape != reference[n].shape}
        for name, ref in reference.items():
            q = query[name]
            if name in grown:
                assert q.shape[1] == ref.shape[1] + 1, name
                q = q[:, : ref.shape[1]]
            assert q.tobytes() == ref.tobytes(), f"{name} changed"
        adapter = result.adapter
        assert set(adapter.tensors) == grown
        patterns = [re.compile(p) for p in backend.adapter_tensors]
        assert all(any(p.fullmatch(n) for p in patterns) for n in adapter.tensors)
        assert {"background_pro_alpha", "background_pro_log_beta", "log_per_batch_efficiency"} <= grown
        assert adapter.batch_categories == ("lab",)
        assert data.uns["fedarches"]["adapter_bytes"] == adapter.nbytes


def test_mudata_maps_like_anndata_and_annotates_its_top_level(totalvi_mapped) -> None:
    """The same cells, RNA and proteins, in scvi-tools' two layouts: the same latent and predictions."""
    adata, _, _ = totalvi_mapped["proteins"]
    mdata, _, _ = totalvi_mapped["mudata"]
    np.testing.assert_allclose(mdata.obsm["X_totalVI"], adata.obsm["X_totalVI"], atol=1e-5)
    np.testing.assert_array_equal(mdata.obs["predicted_cell_type"], adata.obs["predicted_cell_type"])
    pd.testing.assert_frame_equal(mdata.obsm["denoised_protein"], adata.obsm["denoised_protein"], atol=1e-4)
    assert "fedarches" in mdata.uns and "fedarches" not in mdata["rna"].uns
    assert "predicted_cell_type" not in mdata["rna"].obs
    assert mdata["rna"].obsm_keys() == []


def test_rna_only_lab_has_other_latent_than_with_proteins(totalvi_mapped) -> None:
    with_proteins = totalvi_mapped["proteins"][0].obsm["X_totalVI"]
    rna_only = totalvi_mapped["rna_only"][0].obsm["X_totalVI"]
    assert not np.allclose(with_proteins, rna_only, atol=1e-3)  # the proteins reached the encoder


@pytest.mark.parametrize("which", ["totalvi", "totalanvi"])
def test_imputed_proteins_of_an_rna_only_lab_track_the_hidden_ones(which, totalvi_mapped, totalanvi_mapped, lab):
    """Pearson r (log1p) between imputed proteins and the lab's measured proteins, hidden from the mapping."""
    data = totalvi_mapped["rna_only"][0] if which == "totalvi" else totalanvi_mapped[0]
    imputed, measured = data.obsm["denoised_protein"], lab.obsm["protein_expression"]
    r = {
        m: float(np.corrcoef(np.log1p(imputed[m].to_numpy()), np.log1p(measured[m].to_numpy(dtype=float)))[0, 1])
        for m in CLEAR_MARKERS + WEAK_MARKERS
    }
    print(f"{which} RNA-only imputation, Pearson r:", {k: round(v, 3) for k, v in r.items()})
    assert all(r[m] > 0.4 for m in CLEAR_MARKERS), r
    assert all(r[m] > 0.1 for m in WEAK_MARKERS), r
    assert np.median(list(r.values())) > 0.45, r


def test_agrees_with_plain_scvi_tools(totalvi_mapped, totalvi_bundle, lab, tmp_path) -> None:
    """The RNA-only mapping through scvi-tools' own calls (the totalVI reference-mapping tutorial's) gives the same."""
    import scvi
    import torch

    data, _, _ = totalvi_mapped["rna_only"]
    names = totalvi_bundle.protein_names
    query = ad.AnnData(
        X=lab.layers["counts"].copy(), obs=pd.DataFrame(index=lab.obs_names), var=pd.DataFrame(index=lab.var_names)
    )
    query.obs["batch"] = "lab"
    query.obsm["protein_expression"] = pd.DataFrame(
        np.zeros((lab.n_obs, len(names))), index=lab.obs_names, columns=names
    )
    model_dir = str(totalvi_bundle.write_model_dir(tmp_path / "ref"))
    scvi.settings.seed = OPTIONS.seed
    torch.set_num_threads(OPTIONS.threads)
    model = scvi.model.TOTALVI.load_query_data(query, model_dir, freeze_batchnorm_decoder=True)
    model.train(
        max_epochs=OPTIONS.max_epochs,
        batch_size=OPTIONS.batch_size,
        lr=OPTIONS.learning_rate,
        plan_kwargs={"weight_decay": 0.0, "scale_adversarial_loss": 0.0},
        early_stopping=False,
        check_val_every_n_epoch=10,
        enable_progress_bar=False,
    )
    np.testing.assert_allclose(model.get_latent_representation(), data.obsm["X_totalVI"], atol=1e-5)
