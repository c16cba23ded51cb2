"""The fast tier's real path, on tiny real data: map_query as a scanpy tool, a lab's reply judged, an atlas merged.

The reference is tests/data/tiny_bundle (the demo's cell lines on 300 genes, trained once by
tests/data/make_tiny_bundle.py), so only surgery trains here, for seconds; the slow tier repeats
the path with properly trained models.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pytest
import torch

from fedarches.client import MappingOptions, map_query
from fedarches.client.mapping import embed_with_atlas
from fedarches.server import Expected, merge_adapters, validate_reply
from fedarches.server.validation import Accepted
from fedarches.shared import protocol
from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.wire import PlainContent

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
OPTIONS = MappingOptions(max_epochs=3, threads=1, progress_bar=False)


@pytest.fixture
def lab_cells() -> ad.AnnData:
    return ad.read_h5ad(DEMO / "lab_a.h5ad")[:120].copy()


def test_map_query_with_copy_leaves_the_input_and_global_state_as_found(
    files_bundle: ReferenceBundle, lab_cells: ad.AnnData
) -> None:
    before = lab_cells.copy()
    np.random.seed(1234)
    random.seed(1234)
    torch.manual_seed(1234)
    expected_draws = (np.random.random(), random.random(), torch.rand(1).item())
    np.random.seed(1234)
    random.seed(1234)
    torch.manual_seed(1234)
    threads, backend = torch.get_num_threads(), matplotlib.get_backend()

    result = map_query(lab_cells, files_bundle, lab_name="lab_a", options=OPTIONS, copy=True)

    assert (np.random.random(), random.random(), torch.rand(1).item()) == expected_draws  # seed scoped
    assert torch.get_num_threads() == threads and matplotlib.get_backend() == backend
    assert list(lab_cells.obs.columns) == list(before.obs.columns) and not lab_cells.obsm  # input untouched
    annotated = result.adata
    assert annotated is not None and annotated is not lab_cells and annotated.n_obs == lab_cells.n_obs
    assert set(annotated.obs[ADATA_KEYS.PREDICTION].cat.categories) == set(files_bundle.label_categories)
    assert annotated.obsm[result.latent_key].shape == (lab_cells.n_obs, 4)


def test_key_added_puts_every_annotation_under_its_prefix(files_bundle: ReferenceBundle, lab_cells: ad.AnnData) -> None:
    result = map_query(lab_cells, files_bundle, lab_name="lab_a", options=OPTIONS, key_added="cl")
    assert result.adata is None and result.keys == ADATA_KEYS.added("cl")
    written = {*lab_cells.obs.columns, *lab_cells.obsm, *lab_cells.uns}
    assert {result.keys.PREDICTION, result.keys.CONFIDENCE, result.keys.UNS, result.latent_key} <= written
    assert ADATA_KEYS.PREDICTION not in lab_cells.obs and result.latent_key == "cl_X_scANVI"
    assert lab_cells.uns[result.keys.UNS]["params"]["key_added"] == "cl"
    again = map_query(lab_cells, files_bundle, lab_name="lab_a", options=OPTIONS)  # beside it, not over it
    assert again.keys == ADATA_KEYS
    assert {ADATA_KEYS.PREDICTION, "cl_predicted_cell_type"} <= set(lab_cells.obs.columns)


def test_a_labs_reply_is_accepted_and_merged_into_an_atlas_that_reproduces_its_latent(
    files_bundle: ReferenceBundle, lab_cells: ad.AnnData, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    result = map_query(lab_cells, files_bundle, lab_name="lab_a", options=OPTIONS)
    info = protocol.LabInfo("lab_a", "0.1.0", result.n_epochs, protocol.Composition.PLAIN)
    content = protocol.MapReply(info, result.timings, result.adapter, result.label_statistics).to_content()
    expected = Expected.for_bundle(files_bundle, min_count=11, max_adapter_bytes=1_048_576)
    verdict = validate_reply(PlainContent.from_content(content), expected, lab="lab_a")
    assert isinstance(verdict, Accepted), verdict
    assert verdict.reply.adapter.nbytes == result.adapter.nbytes

    atlas = merge_adapters(files_bundle, [("lab_a", verdict.reply.adapter)], tmp_path / "atlas", keys[0])
    assert atlas.batch_categories == [*files_bundle.batch_categories, *result.adapter.batch_categories]
    latent = embed_with_atlas(lab_cells, atlas, lab_name="lab_a")
    np.testing.assert_allclose(latent, lab_cells.obsm[result.latent_key], atol=1e-5)


def test_a_kept_probe_finding_gives_the_rounds_the_same_expectations(files_bundle: ReferenceBundle, tmp_path: Path):
    """The coordinator probes surgery once per bundle; later rounds read what it found."""
    from fedarches.server.round import _read_probe

    probed = Expected.for_bundle(files_bundle, min_count=11, max_adapter_bytes=1_048_576)
    kept = tmp_path / f"{files_bundle.bundle_id}.json"
    kept.write_text(json.dumps(dict(probed.grown)))
    read = _read_probe(kept)
    assert read == dict(probed.grown)
    again = Expected.for_bundle(files_bundle, min_count=11, max_adapter_bytes=1_048_576, grown=read)
    assert again == probed
    for bad in ("", "[]", "{}", '{"x": true}', '{"x": "1"}', "{not json"):
        kept.write_text(bad)
        assert _read_probe(kept) is None  # the probe runs again
    assert _read_probe(tmp_path / "missing.json") is None


def test_build_reference_leaves_the_random_state_as_found() -> None:
    """The coordinator's API is a library call too: its seed is scoped like map_query's."""
    from fedarches.server import ReferenceOptions, build_reference

    reference = ad.read_h5ad(DEMO / "reference.h5ad")[:, :200].copy()
    np.random.seed(99)
    expected = np.random.random()
    np.random.seed(99)
    options = ReferenceOptions(n_latent=2, n_layers=1, n_top_genes=None, max_epochs=1, scanvi_max_epochs=1)
    build_reference(reference, batch_key="batch", labels_key="cell_type", options=replace(options, progress_bar=False))
    assert np.random.random() == expected


def test_an_scvi_model_trained_on_every_cell_imports(tmp_path: Path) -> None:
    """No validation split (``train_size=1.0``): the kNN calibration votes from the other half of the labelled cells.

    It used to stop inside scikit-learn (``n_neighbors`` 0): every labelled cell was held out.
    """
    import scvi

    from fedarches.server import import_reference

    reference = ad.read_h5ad(DEMO / "reference.h5ad")[:, :300].copy()
    scvi.model.SCVI.setup_anndata(reference, layer="counts", batch_key="batch", labels_key="cell_type")
    model = scvi.model.SCVI(reference, n_latent=4, n_layers=1, encode_covariates=True, use_batch_norm="none")
    model.train(max_epochs=1, train_size=1.0, enable_progress_bar=False)
    model.save(tmp_path / "model")
    contents = import_reference(tmp_path / "model", reference_adata=reference, labels_key="cell_type")
    assert contents.summary is not None and contents.label_categories == sorted(set(reference.obs["cell_type"]))
