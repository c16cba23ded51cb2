"""trVAE written on scvi-tools' base classes: the MMD, surgery, and the backend through fedarches' pipeline.

Fast: the MMD's math, and a reference and a query on real CellBench cells (few epochs). Slow: the
``trvae`` backend built into a signed bundle, a lab mapped with ``map_query`` (kNN labels), and a
merged atlas that reproduces the lab's latent.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from fedarches.shared.backends import get_backend
from fedarches.shared.errors import AdapterError
from fedarches.shared.models.trvae import TRVAE
from fedarches.shared.models.trvae._module import conditions_mmd, mmd

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
GROWN = {"encoder_first.cond_L.weight": 1, "decoder_first.cond_L.weight": 1, "theta": 1}


def test_mmd_is_zero_for_one_sample_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    cells = torch.as_tensor(rng.normal(size=(40, 3)), dtype=torch.float32)
    assert mmd(cells, cells).item() == pytest.approx(0.0, abs=1e-5)
    near, far = mmd(cells, cells + 0.1).item(), mmd(cells, cells + 2.0).item()
    assert 0 < near < far
    batches = torch.tensor([0] * 20 + [1] * 20)
    shifted = torch.cat([cells[:20], cells[20:] + 2.0])
    assert conditions_mmd(shifted, batches) > conditions_mmd(cells, batches)
    assert conditions_mmd(cells, torch.zeros(40)).item() == 0.0  # one condition: nothing to compare


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TRVAE, TRVAE, ad.AnnData]:
    import scvi

    scvi.settings.seed = 0
    reference = ad.read_h5ad(DEMO / "reference.h5ad")
    TRVAE.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
    model = TRVAE(reference)
    model.train(max_epochs=15, enable_progress_bar=False)
    directory = tmp_path_factory.mktemp("trvae") / "reference"
    model.save(directory, save_anndata=False)
    query = ad.read_h5ad(DEMO / "lab_a.h5ad")
    query_model = TRVAE.load_query_data(query, str(directory))
    query_model.train(max_epochs=5, enable_progress_bar=False)
    return model, query_model, query


def test_surgery_trains_only_the_new_condition_columns(trained) -> None:
    model, query_model, _ = trained
    before, after = model.module.state_dict(), query_model.module.state_dict()
    grown = {name for name in before if after[name].shape != before[name].shape}
    assert grown == set(GROWN)
    assert {n for n, p in query_model.module.named_parameters() if p.requires_grad} == set(GROWN)
    for name, value in before.items():
        if name in GROWN:
            width = value.shape[1]
            assert after[name].shape[1] == width + 1
            assert torch.equal(after[name][:, :width], value), name  # bit-identical
        else:
            assert torch.equal(after[name], value), name


def test_the_query_lands_on_its_cell_lines_by_knn(trained) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    model, query_model, query = trained
    reference_latent = model.get_latent_representation()
    truth = model.adata.obs["cell_type"].astype(str).to_numpy()
    knn = KNeighborsClassifier(15, weights="distance").fit(reference_latent, truth)
    predicted = knn.predict(query_model.get_latent_representation(query))
    assert (predicted == query.obs["cell_type"].astype(str).to_numpy()).mean() > 0.6  # chance 1/3; 20 epochs in all


def test_the_backend_allows_only_condition_columns_and_dispersions_to_leave() -> None:
    backend = get_backend("trvae")
    assert backend.model_class == "TRVAE" and not backend.has_classifier and backend.model_cls() is TRVAE
    backend.check_adapter_tensors(GROWN)
    with pytest.raises(AdapterError, match="does not allow"):
        backend.check_adapter_tensors(["theta", "encoder_first.expr_L.weight"])


@pytest.mark.slow
def test_a_trvae_bundle_maps_a_lab_and_its_atlas_reproduces_the_latent(tmp_path: Path, keys) -> None:
    from fedarches.client.mapping import MappingOptions, embed_with_atlas, map_query
    from fedarches.server.merge import merge_adapters
    from fedarches.server.reference import ReferenceOptions, build_reference
    from fedarches.shared import crypto
    from fedarches.shared.bundle import ReferenceBundle, write_bundle

    options = ReferenceOptions(model="trvae", n_top_genes=1000, max_epochs=60, progress_bar=False, threads=1)
    contents = build_reference(ad.read_h5ad(DEMO / "reference.h5ad"), batch_key="batch", labels_key="cell_type",
                               options=options)  # fmt: skip
    written = write_bundle(tmp_path / "bundle", contents, crypto.load_private_key(keys[0]))
    bundle = ReferenceBundle.open(written, keys[1])
    assert bundle.setup["backend"] == "trvae" and bundle.embedding is not None
    lab = ad.read_h5ad(DEMO / "lab_b.h5ad")
    result = map_query(lab, bundle, lab_name="lab_b", options=MappingOptions(max_epochs=20, progress_bar=False))
    assert sorted(result.adapter.tensors) == sorted(GROWN)
    predicted = lab.obs["predicted_cell_type"].astype(str).to_numpy()
    assert (predicted == lab.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    atlas = merge_adapters(bundle, [("lab_b", result.adapter)], tmp_path / "atlas", keys[0], round_id="r1")
    np.testing.assert_allclose(embed_with_atlas(lab, atlas, lab_name="lab_b"), lab.obsm["X_trVAE"], atol=1e-5)
