"""scPoli written on scvi-tools' base classes: the module's math, training with prototypes, and surgery.

Fast: tiny real data (the demo's CellBench cell lines, 319 + 210 cells, 20 epochs). The slow federated
round with an scPoli reference is in tests/e2e/test_backends_federation.py.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from fedarches.shared.backends import get_backend
from fedarches.shared.errors import AdapterError
from fedarches.shared.models.scpoli import SCPOLI, ScPoliModule

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
EPOCHS, PRETRAINING = 20, 15  # scArches trains 50 (40); its Adam eps of 0.01 needs steps


# ---- the module's math ----------------------------------------------------------------------------
def test_prototype_loss_sums_each_types_mean_distance_and_ignores_cells_without_prototype() -> None:
    module = ScPoliModule(n_input=4, n_batch=2, n_labels=3, n_latent=2)
    module.prototypes.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [9.0, 9.0]]))
    module.prototype_set.copy_(torch.tensor([True, True, False]))
    z = torch.tensor([[0.0, 1.0], [0.0, 3.0], [3.0, 0.0], [100.0, 100.0]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [2.0]])
    assert module.prototype_loss(z, labels).item() == 0.0  # eta 0: the pretraining phase
    module.eta = 1.0
    # type 0: distances 1 and 3 (mean 2); type 1: distance 4; the cell of type 2 has no prototype
    assert module.prototype_loss(z, labels).item() == pytest.approx(6.0)
    distances = module.distances_to_prototypes(z[:1])
    assert distances[0, :2].tolist() == pytest.approx([1.0, np.hypot(3.0, 3.0)]) and distances[0, 2] == np.inf


def test_prototype_probabilities_are_gaussian_posteriors_of_the_reference_spread() -> None:
    module = ScPoliModule(n_input=4, n_batch=1, n_labels=2, n_latent=1)
    module.prototypes.copy_(torch.tensor([[0.0], [2.0]]))
    module.prototype_set.fill_(True)
    module.prototype_variance.fill_(0.5)
    probabilities = module.prototype_probabilities(torch.tensor([[0.0], [1.0]]))
    expected = 1 / (1 + np.exp(-4.0))  # exp(-0/1) against exp(-4/1)
    assert probabilities[0].tolist() == pytest.approx([expected, 1 - expected])
    assert probabilities[1].tolist() == pytest.approx([0.5, 0.5])  # halfway


def test_condition_embeddings_are_capped_without_changing_the_stored_rows() -> None:
    module = ScPoliModule(n_input=4, n_batch=2, n_labels=1, embedding_dim=2, embedding_max_norm=1.0)
    with torch.no_grad():
        module.embedding.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    rows = module.condition_embedding(torch.tensor([[0], [1]]))
    assert rows.norm(dim=1).tolist() == pytest.approx([1.0, 0.5], abs=1e-6)
    assert module.embedding.weight[0].tolist() == [3.0, 4.0]  # nn.Embedding(max_norm=...) would rescale it in place


# ---- a reference and a query on real cells ----------------------------------------------------------
def _cells(name: str, genes: list[str] | None = None) -> ad.AnnData:
    adata = ad.read_h5ad(DEMO / f"{name}.h5ad")
    return adata if genes is None else adata[:, genes].copy()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[SCPOLI, Path]:
    import scvi

    scvi.settings.seed = 0
    adata = _cells("reference")
    SCPOLI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = SCPOLI(adata)
    model.train(max_epochs=EPOCHS, pretraining_epochs=PRETRAINING, enable_progress_bar=False)
    directory = tmp_path_factory.mktemp("scpoli") / "reference"
    model.save(directory, save_anndata=False)
    return model, directory


@pytest.fixture(scope="module")
def query(reference: tuple[SCPOLI, Path]) -> tuple[SCPOLI, ad.AnnData]:
    model, directory = reference
    adata = _cells("lab_a", list(model.adata.var_names))
    adata.obs["cell_type"] = "Unknown"  # an unlabeled query
    query_model = SCPOLI.load_query_data(adata, str(directory))
    query_model.train(max_epochs=3, enable_progress_bar=False)
    return query_model, adata


def test_a_reference_has_one_prototype_per_type_at_its_cells_latent_mean(reference) -> None:
    model, _ = reference
    truth = model.adata.obs["cell_type"].astype(str).to_numpy()
    assert sorted(model.cell_types) == sorted(set(truth))
    latent = model.get_latent_representation()
    prototypes = model.get_prototypes()
    for cell_type in model.cell_types:  # set after the last epoch from every cell
        np.testing.assert_allclose(prototypes.loc[cell_type], latent[truth == cell_type].mean(axis=0), atol=1e-5)
    assert "prototype_loss_train" in model.history


def test_predictions_are_the_nearest_prototype_and_uncertainty_its_distance(reference) -> None:
    model, _ = reference
    classified = model.classify()
    distances = model.prototype_distances()
    assert (classified["prediction"].to_numpy() == distances.idxmin(axis=1).to_numpy()).all()
    np.testing.assert_allclose(classified["uncertainty"], distances.min(axis=1))
    soft = model.predict(soft=True)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    assert (soft.idxmax(axis=1).to_numpy() == classified["prediction"].to_numpy()).all()
    scaled = model.classify(scale_uncertainties=True)["uncertainty"]
    assert scaled.min() == pytest.approx(0.0) and scaled.max() == pytest.approx(1.0)
    truth = model.adata.obs["cell_type"].astype(str).to_numpy()
    assert (classified["prediction"].to_numpy() == truth).mean() > 0.8  # chance 0.2


def test_save_and_load_keep_prototypes_and_predictions(reference) -> None:
    model, directory = reference
    loaded = SCPOLI.load(str(directory), adata=model.adata)
    np.testing.assert_array_equal(loaded.get_prototypes().to_numpy(), model.get_prototypes().to_numpy())
    assert float(loaded.module.prototype_variance) == float(model.module.prototype_variance)
    assert (loaded.predict() == model.predict()).all()


def test_surgery_trains_only_the_new_embedding_row_and_theta_column(reference, query) -> None:
    model, _ = reference
    query_model, _ = query
    before = model.module.state_dict()
    after = query_model.module.state_dict()
    grown = {name for name in before if after[name].shape != before[name].shape}
    assert grown == {"embedding.weight", "theta"}
    assert after["embedding.weight"].shape[0] == before["embedding.weight"].shape[0] + 1
    assert after["theta"].shape[1] == before["theta"].shape[1] + 1
    trainable = {name for name, p in query_model.module.named_parameters() if p.requires_grad}
    assert trainable == {"embedding.weight", "theta"}
    for name, value in before.items():
        new = after[name]
        if name in grown:
            axis = 0 if name == "embedding.weight" else 1
            assert torch.equal(new.narrow(axis, 0, value.shape[axis]), value), name  # bit-identical
            assert not torch.equal(new.narrow(axis, value.shape[axis], 1), torch.zeros(1)), name
        else:
            assert torch.equal(new, value), name


def test_a_query_keeps_the_reference_prototypes_and_maps_onto_them(reference, query) -> None:
    model, _ = reference
    query_model, adata = query
    np.testing.assert_array_equal(query_model.get_prototypes().to_numpy(), model.get_prototypes().to_numpy())
    predicted = query_model.predict()
    truth = ad.read_h5ad(DEMO / "lab_a.h5ad").obs["cell_type"].astype(str).to_numpy()
    assert len(predicted) == adata.n_obs and set(predicted) <= set(model.cell_types)
    assert (predicted == truth).mean() > 0.5  # another technology (Drop-seq), 3 epochs of surgery


def test_a_labelled_query_is_pulled_to_the_reference_prototypes_without_moving_them(reference) -> None:
    model, directory = reference
    adata = _cells("lab_a", list(model.adata.var_names))
    query_model = SCPOLI.load_query_data(adata, str(directory))  # lab_a's own labels: reference types
    query_model.train(max_epochs=3, pretraining_epochs=1, enable_progress_bar=False)
    losses = query_model.history["prototype_loss_train"]["prototype_loss_train"].to_numpy()
    assert losses[0] == 0.0 and (losses[1:] > 0).all()  # the prototype phase, on the labelled cells
    np.testing.assert_array_equal(query_model.get_prototypes().to_numpy(), model.get_prototypes().to_numpy())


# ---- the backend ------------------------------------------------------------------------------------
def test_the_backend_allows_only_embedding_rows_and_dispersions_to_leave() -> None:
    backend = get_backend("scpoli")
    assert backend.model_class == "SCPOLI" and backend.has_classifier and backend.needs_labels
    backend.check_adapter_tensors(["embedding.weight", "theta"])
    with pytest.raises(AdapterError, match="does not allow"):
        backend.check_adapter_tensors(["embedding.weight", "encoder.layer.expr_L.weight"])
    assert backend.model_cls() is SCPOLI
