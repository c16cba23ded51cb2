"""scGen written on scvi-tools' base classes: latent arithmetic, batch removal, mapping without training, the backend.

Fast: the arithmetic's rules, and a reference on real PBMC cells (few epochs) corrected and mapped.
Slow: the ``scgen`` backend built into a signed bundle and a lab mapped with ``map_query``, with and
without its own labels; nothing trains and nothing but label statistics could leave.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from fedarches.shared.backends import get_backend
from fedarches.shared.errors import AdapterError
from fedarches.shared.models.scgen import SCGEN, shift_to_targets, type_means

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def _group_mean(latent: np.ndarray, labels: np.ndarray, batches: np.ndarray, label: str, batch: str) -> np.ndarray:
    return latent[(labels == label) & (batches == batch)].mean(axis=0)


def test_each_batch_of_a_type_moves_onto_its_largest_batch_and_lonely_types_stay() -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["T"] * 30 + ["B"] * 10 + ["NK"] * 5 + ["?"] * 4)
    batches = np.array(["big"] * 20 + ["small"] * 10 + ["big"] * 4 + ["small"] * 6 + ["big"] * 5 + ["small"] * 4)
    latent = (rng.normal(size=(len(labels), 3)) + (batches == "small")[:, None] * 5.0).astype(np.float32)
    corrected = shift_to_targets(latent, labels, batches, unlabeled="?")
    for label, largest in (("T", "big"), ("B", "small")):
        target = _group_mean(latent, labels, batches, label, largest)
        for batch in ("big", "small"):
            np.testing.assert_allclose(_group_mean(corrected, labels, batches, label, batch), target, atol=1e-5)
    within = (labels == "T") & (batches == "small")  # a shift, not a collapse: spread within a group is kept
    np.testing.assert_allclose(np.cov(corrected[within].T), np.cov(latent[within].T), atol=1e-4)
    for untouched in ("NK", "?"):  # one batch only; unlabeled
        np.testing.assert_array_equal(corrected[labels == untouched], latent[labels == untouched])
    targets = {"T": np.zeros(3, np.float32)}
    onto = shift_to_targets(latent, labels, batches, targets)
    np.testing.assert_allclose(_group_mean(onto, labels, batches, "T", "small"), np.zeros(3), atol=1e-5)
    np.testing.assert_array_equal(onto[labels == "B"], latent[labels == "B"])  # no target: stays


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SCGEN, ad.AnnData, Path]:
    import scvi

    scvi.settings.seed = 0
    adata = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")[:, :600].copy()
    adata.X = adata.layers["counts"]
    reference = adata[adata.obs["batch"] != "5p"].copy()
    SCGEN.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
    model = SCGEN(reference)
    model.train(max_epochs=8, enable_progress_bar=False)
    directory = tmp_path_factory.mktemp("scgen") / "reference"
    model.save(directory, save_anndata=False)
    return model, adata[adata.obs["batch"] == "5p"].copy(), directory


def test_batch_removal_aligns_every_shared_type_and_decodes_expression(trained) -> None:
    model, _, _ = trained
    corrected = model.batch_removal()
    labels, batches = model.adata.obs["cell_type"].astype(str).to_numpy(), model.adata.obs["batch"].to_numpy()
    latent = corrected.obsm["latent_corrected"]
    for label in ("T_CD4", "Mono_CD14", "B"):
        np.testing.assert_allclose(
            _group_mean(latent, labels, batches, label, "3pv1"), _group_mean(latent, labels, batches, label, "3pv2"),
            atol=1e-4,
        )  # fmt: skip
    assert corrected.shape == model.adata.shape and np.isfinite(corrected.X).all()
    np.testing.assert_allclose(corrected.X, model.decode(latent), rtol=1e-5)


def test_a_query_maps_without_training_onto_the_references_type_means(trained) -> None:
    model, query, directory = trained
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    query_model = SCGEN.load_query_data(query, str(directory))
    assert not any(p.requires_grad for p in query_model.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in query_model.module.state_dict().items())
    reference_labels = model.adata.obs["cell_type"].astype(str).to_numpy()
    targets = type_means(model.corrected_latent(), reference_labels)
    corrected = query_model.corrected_latent(targets=targets)
    labels = query.obs["cell_type"].astype(str).to_numpy()
    for label in ("T_CD4", "Mono_CD14"):
        np.testing.assert_allclose(corrected[labels == label].mean(axis=0), targets[label], atol=1e-4)


def test_the_backend_trains_nothing_and_lets_no_tensor_leave() -> None:
    backend = get_backend("scgen")
    assert backend.model_class == "SCGEN" and not backend.surgery_trains and backend.model_cls() is SCGEN
    backend.check_adapter_tensors([])
    with pytest.raises(AdapterError, match="does not allow"):
        backend.check_adapter_tensors(["expression.weight"])


@pytest.mark.slow
def test_an_scgen_bundle_maps_a_lab_with_and_without_its_labels(tmp_path: Path, keys) -> None:
    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.server.merge import merge_adapters
    from fedarches.server.reference import ReferenceOptions, build_reference
    from fedarches.shared import crypto
    from fedarches.shared.bundle import ReferenceBundle, write_bundle

    pbmc = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    options = ReferenceOptions(model="scgen", n_top_genes=800, max_epochs=30, progress_bar=False, threads=1)
    contents = build_reference(pbmc[pbmc.obs["batch"] != "5p"].copy(), batch_key="batch", labels_key="cell_type",
                               options=options)  # fmt: skip
    written = write_bundle(tmp_path / "bundle", contents, crypto.load_private_key(keys[0]))
    bundle = ReferenceBundle.open(written, keys[1])
    assert bundle.setup["backend"] == "scgen" and bundle.embedding is not None
    lab = pbmc[pbmc.obs["batch"] == "5p"].copy()
    truth = lab.obs["cell_type"].astype(str).to_numpy()
    unlabelled = lab.copy()
    del unlabelled.obs["cell_type"]
    results = {}
    for name, data in (("labelled", lab), ("unlabelled", unlabelled)):
        result = map_query(data, bundle, lab_name="lab_5p", options=MappingOptions(progress_bar=False))
        assert result.n_epochs == 0 and result.adapter.tensors == {} and result.adapter.nbytes == 0
        predicted = data.obs["predicted_cell_type"].astype(str).to_numpy()
        assert (predicted == truth).mean() > 0.75, name
        assert data.obsm["scgen_corrected"].shape == (data.n_obs, len(bundle.var_names))
        results[name] = result
    assert lab.uns["fedarches"]["inputs"]["n_cells_lab_labelled"] == lab.n_obs
    assert "predicted" in unlabelled.uns["fedarches"]["inputs"]["cell_types_for_correction"]
    assert "fedarches_scgen_reference" not in lab.uns  # the reference embedding stays in memory
    targets = type_means(bundle.embedding["latent"][bundle.embedding["labels"] >= 0], np.asarray(
        bundle.label_categories)[bundle.embedding["labels"][bundle.embedding["labels"] >= 0]])  # fmt: skip
    b_cells = truth == "B"
    np.testing.assert_allclose(lab.obsm["X_scGen"][b_cells].mean(axis=0), targets["B"], atol=1e-4)
    atlas = merge_adapters(bundle, [("lab_5p", results["labelled"].adapter)], tmp_path / "atlas", keys[0],
                           round_id="r1")  # fmt: skip
    assert atlas.batch_categories == [*bundle.batch_categories, "lab_5p"]
