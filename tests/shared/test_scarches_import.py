"""Models saved by the scArches package's scPoli, imported without running pickled code.

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
from fedarches.shared.models.scpoli import is_scarches_save, read_scarches_scpoli, scarches_to_model
from fedarches.shared.models.scpoli._scarches import read_attributes

DATA = Path(__file__).resolve().parents[1] / "data"
SAVED = DATA / "scarches_scpoli" / "model"
DEMO = DATA.parents[1] / "data" / "demo"


def test_the_import_gives_scarches_own_latent_on_the_same_cells() -> None:
    saved = read_scarches_scpoli(SAVED)
    assert (saved.condition_key, saved.cell_type_key) == ("batch", "cell_type")
    assert len(saved.genes) == 200 and saved.prototypes.shape == (5, 10)
    model, adata = scarches_to_model(saved, ad.read_h5ad(DEMO / "reference.h5ad"))
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
    with pytest.raises(UserInputError, match="not an scPoli model"):
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
