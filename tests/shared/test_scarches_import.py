"""Models saved by the scArches package (scPoli, trVAE, expiMap), imported without running pickled code.

The fixture (tests/data/scarches_scpoli/, made by tests/data/make_scarches_scpoli.py with scArches
0.6.1 itself) holds scArches' ``model.save()`` files and the latent means scArches gives the demo
reference's cells.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.shared.errors import UserInputError
from fedarches.shared.models._scarches_files import read_attributes
from fedarches.shared.models.scpoli import is_scarches_save, read_scarches_scpoli, scarches_to_model

DATA = Path(__file__).resolve().parents[1] / "data"
SAVED = DATA / "scarches_scpoli" / "model"
DEMO = DATA.parents[1] / "data" / "demo"


def test_the_import_gives_scarches_own_latent_on_the_same_cells() -> None:
    saved = read_scarches_scpoli(SAVED)
    assert (saved.condition_key, saved.cell_type_key) == ("batch", "cell_type")
    assert len(saved.genes) == 200 and saved.prototypes.shape == (5, 10)
    reference = ad.read_h5ad(DEMO / "reference.h5ad")
    reference.X = reference.layers["counts"]
    model, adata = scarches_to_model(saved, reference)
    expected = np.load(DATA / "scarches_scpoli" / "latent.npy")
    np.testing.assert_allclose(model.get_latent_representation(), expected, atol=1e-5)
    np.testing.assert_array_equal(model.get_prototypes().to_numpy(), saved.prototypes)
    assert list(adata.var_names) == saved.genes


def test_without_reference_data_the_model_is_registered_on_one_empty_cell_per_condition() -> None:
    model, adata = scarches_to_model(read_scarches_scpoli(SAVED))
    assert adata.n_obs == 2 and sorted(model.cell_types) == sorted(read_scarches_scpoli(SAVED).cell_types)
    assert float(model.module.prototype_variance[0]) > 0  # from scArches' per-type covariances


class _Payload:
    """Unpickling this would run ``os.system``: the importer must build an inert placeholder instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "saved"
    shutil.copytree(SAVED, directory)
    marker = tmp_path / "ran"
    attributes = {"recon_loss_": "nb", "payload": _Payload(marker)}
    (directory / "attr.pkl").write_bytes(pickle.dumps(attributes))
    with pytest.raises(UserInputError, match="not an scArches scPoli model"):
        read_scarches_scpoli(directory)
    assert not marker.exists()


def test_broken_or_foreign_saves_are_refused_with_one_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "saved"
    shutil.copytree(SAVED, directory)
    (directory / "attr.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserInputError, match="not a readable scArches attribute file"):
        read_scarches_scpoli(directory)
    attributes = read_attributes(SAVED / "attr.pkl")
    (directory / "attr.pkl").write_bytes(pickle.dumps({**attributes, "recon_loss_": "mse"}))
    with pytest.raises(UserInputError, match="reconstruction loss 'mse'"):
        read_scarches_scpoli(directory)
    (directory / "attr.pkl").write_bytes(pickle.dumps({**attributes, "hidden_layer_sizes_": [64, 32]}))
    with pytest.raises(UserInputError, match="hidden layers"):
        read_scarches_scpoli(directory)
    assert is_scarches_save(SAVED) and not is_scarches_save(tmp_path)


def test_import_reference_turns_an_scarches_save_into_an_scpoli_bundle(tmp_path: Path, keys) -> None:
    from fedarches.server.reference import import_reference
    from fedarches.shared import crypto
    from fedarches.shared.bundle import ReferenceBundle, write_bundle

    contents = import_reference(SAVED, reference_adata=ad.read_h5ad(DEMO / "reference.h5ad"))
    bundle = ReferenceBundle.open(write_bundle(tmp_path / "b", contents, crypto.load_private_key(keys[0])), keys[1])
    assert bundle.setup["backend"] == "scpoli" and bundle.model_class == "SCPOLI"
    assert sorted(bundle.label_categories) == sorted(read_scarches_scpoli(SAVED).cell_types)
    assert bundle.embedding is not None and bundle.reference_summary is not None
    assert len(bundle.var_names) == 200


# ---- trVAE and expiMap (tests/data/make_scarches_trvae_expimap.py) --------------------------------------
def _fixture_cells(family: str, data: str) -> ad.AnnData:
    """The cells scArches' model was trained on, in its order, with counts in X."""
    import pandas as pd

    obs = pd.read_csv(DATA / f"scarches_{family}" / "obs.csv", index_col=0)
    adata = ad.read_h5ad(DEMO / data)
    adata.X = adata.layers["counts"]
    return adata[obs.index.astype(str)].copy()


@pytest.mark.parametrize(("family", "data"), [("trvae", "reference.h5ad"), ("expimap", "pbmc_3chem.h5ad")])
def test_a_trvae_or_expimap_import_gives_scarches_own_latent(family: str, data: str) -> None:
    from fedarches.shared.models._scarches_cvae import read_scarches_cvae, to_model

    saved = read_scarches_cvae(DATA / f"scarches_{family}" / "model")
    assert saved.family.lower() == family and saved.condition_key == "batch"
    terms = None
    if family == "expimap":
        terms = (DATA / "scarches_expimap" / "terms.txt").read_text().splitlines()
    model, _ = to_model(saved, "cell_type", _fixture_cells(family, data), terms=terms)
    expected = np.load(DATA / f"scarches_{family}" / "latent.npy")
    np.testing.assert_allclose(model.get_latent_representation(), expected, atol=1e-5)
    if family == "expimap":
        assert model.program_names == terms and model.term_genes(terms[0])["in_mask"].all()


def test_import_reference_makes_a_knn_bundle_from_an_scarches_trvae(tmp_path: Path) -> None:
    from fedarches.server.reference import import_reference

    cells = _fixture_cells("trvae", "reference.h5ad")
    with pytest.raises(UserInputError, match="holds no cell types") as caught:
        import_reference(DATA / "scarches_trvae" / "model")
    assert "--labels-key" in caught.value.hint
    contents = import_reference(DATA / "scarches_trvae" / "model", reference_adata=cells, labels_key="cell_type")
    assert contents.model_class == "TRVAE" and contents.embedding is not None and contents.summary is not None
    assert sorted(contents.label_categories) == sorted(cells.obs["cell_type"].astype(str).unique())


def test_scarches_models_fedarches_cannot_hold_are_refused_by_name(tmp_path: Path) -> None:
    from fedarches.server.reference import import_reference

    directory = tmp_path / "saved"
    shutil.copytree(DATA / "scarches_trvae" / "model", directory)
    attributes = read_attributes(directory / "attr.pkl")
    (directory / "attr.pkl").write_bytes(pickle.dumps({**attributes, "use_bn_": True}))
    with pytest.raises(UserInputError, match="batch norm"):
        import_reference(directory, reference_adata=_fixture_cells("trvae", "reference.h5ad"), labels_key="cell_type")
    (directory / "attr.pkl").write_bytes(pickle.dumps({"x_dim_": 200, "z_dim_": 10, "dr_rate_": 0.05}))
    with pytest.raises(UserInputError, match="scGen model") as caught:
        import_reference(directory)
    assert "--model scgen" in caught.value.hint
