"""Real scArches surgery on the demo data: what map_query writes and what it guarantees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedarches.client.mapping import MappingOptions, embed_with_adapters, map_query

pytestmark = pytest.mark.slow
OPTIONS = MappingOptions(max_epochs=40, seed=3, threads=1, progress_bar=False)  # one thread: reproducible sums


@pytest.fixture(scope="module")
def mapped(demo_bundle, lab_a):
    adata = lab_a.copy()
    result = map_query(adata, demo_bundle, lab_name="lab_a", options=OPTIONS)
    return adata, result


def test_writes_tutorial_keys_and_keeps_input(mapped, lab_a) -> None:
    adata, result = mapped
    assert adata.obs["predicted_cell_type"].dtype == "category"
    assert set(adata.obs["predicted_cell_type"].cat.categories) == {"A549", "H1975", "H2228", "H838", "HCC827"}
    confidence = adata.obs["prediction_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    np.testing.assert_array_equal(adata.obs["is_low_confidence"].to_numpy(), confidence < 0.5)
    assert adata.obsm["X_scANVI"].shape == (adata.n_obs, 10)
    assert adata.obsm["X_ref_umap"].shape == (adata.n_obs, 2)
    info = adata.uns["fedarches"]
    assert info["bundle_id"] == result.adapter.bundle_id
    assert info["reference_weights_unchanged"] is True
    assert info["gene_overlap"]["n_present"] == 2000
    assert info["counts_source"] == "layers['counts']"
    for column in lab_a.obs.columns:
        pd.testing.assert_series_equal(adata.obs[column], lab_a.obs[column])
    assert (adata.layers["counts"] != lab_a.layers["counts"]).nnz == 0
    accuracy = (adata.obs["predicted_cell_type"].astype(str) == adata.obs["cell_type"].astype(str)).mean()
    assert accuracy > 0.9


def test_reference_tensors_bit_identical(mapped, demo_bundle) -> None:
    _, result = mapped
    reference = demo_bundle.reference_state()
    query = {k: v.detach().cpu().numpy() for k, v in result.model.module.state_dict().items()}
    grown = set(result.adapter.tensors)
    for name, ref in reference.items():
        q = query[name]
        if name in grown:
            assert q.shape[1] == ref.shape[1] + 1
            q = q[:, : ref.shape[1]]
        else:
            assert q.shape == ref.shape
        assert q.tobytes() == ref.tobytes(), f"{name} changed"
    assert grown == {n for n in reference if query[n].shape != reference[n].shape}


def test_adapter_holds_only_new_batch_columns(mapped) -> None:
    _, result = mapped
    adapter = result.adapter
    assert adapter.batch_categories == ("lab_a",)
    assert all(t.values.shape == (128, 1) and t.axis == 1 for t in adapter.tensors.values())
    assert adapter.nbytes == 128 * 4 * len(adapter.tensors)
    stats = {t.cell_type: t for t in result.label_statistics.types}
    assert stats["A549"].n_cells is None  # 0 cells of A549 in lab A: suppressed, not sent as 0


def test_adapter_round_trip_reproduces_latent(mapped, demo_bundle, lab_a) -> None:
    adata, result = mapped
    from fedarches.shared.adapters import Adapter

    adapter = Adapter.from_bytes(result.adapter.to_bytes())
    latent = embed_with_adapters(lab_a.copy(), demo_bundle, adapter, lab_name="lab_a")
    np.testing.assert_allclose(latent, adata.obsm["X_scANVI"], atol=1e-5)


def test_agrees_with_plain_scvi_tools(mapped, demo_bundle, lab_a, tmp_path) -> None:
    """fedarches wraps scvi-tools: the same surgery through scvi-tools' own calls gives the same answer."""
    import anndata as ad
    import scvi
    import torch

    adata, _ = mapped
    query = ad.AnnData(
        X=lab_a.layers["counts"].copy(),
        obs=pd.DataFrame(index=lab_a.obs_names),
        var=pd.DataFrame(index=lab_a.var_names),
    )
    query.obs["batch"] = "lab_a"
    query.obs["cell_type"] = "Unknown"
    model_dir = str(demo_bundle.write_model_dir(tmp_path / "ref"))
    scvi.model.SCANVI.prepare_query_anndata(query, model_dir)
    scvi.settings.seed = OPTIONS.seed
    torch.set_num_threads(OPTIONS.threads)  # as map_query did: another thread count sums in another order
    model = scvi.model.SCANVI.load_query_data(query, model_dir, freeze_batchnorm_decoder=True)
    model.train(
        max_epochs=OPTIONS.max_epochs,
        batch_size=OPTIONS.batch_size,
        plan_kwargs={"weight_decay": 0.0, "lr": OPTIONS.learning_rate},
        early_stopping=OPTIONS.early_stopping,
        early_stopping_patience=OPTIONS.early_stopping_patience,
        check_val_every_n_epoch=1 if OPTIONS.early_stopping else 10,
        enable_progress_bar=False,
    )
    latent = model.get_latent_representation()
    np.testing.assert_array_equal(model.predict(), adata.obs["predicted_cell_type"].astype(str).to_numpy())
    np.testing.assert_allclose(latent, adata.obsm["X_scANVI"], atol=1e-5)


def test_writes_calibrated_confidence_mapping_score_and_unknown(mapped, demo_bundle) -> None:
    adata, result = mapped
    summary = demo_bundle.reference_summary
    assert summary is not None and summary.temperature >= 1.0 and summary.nbytes < 10_000
    obs = adata.obs
    for key in ("prediction_confidence_raw", "mapping_distance", "mapping_score", "is_unknown"):
        assert key in obs
    np.testing.assert_array_equal(
        obs["is_unknown"].to_numpy(),
        (obs["mapping_distance"].to_numpy() > summary.distance_threshold) | (obs["prediction_confidence"] < 0.5),
    )
    assert ((obs["mapping_score"] >= 0) & (obs["mapping_score"] <= 1)).all()
    # lab A holds only types the reference knows, but another technology (Drop-seq vs CEL-seq2):
    # docs/benchmarks_unknown.md reports how many such cells cross the threshold on the full data
    assert obs["is_unknown"].mean() < 0.25
    counted = {t.cell_type for t in result.label_statistics.types}
    assert "Unknown" in counted  # counted as its own category (suppressed when below k)
    assert adata.uns["fedarches"]["quality"]["calibrated"] is True
