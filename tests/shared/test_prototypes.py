"""New cell types from labs' prototypes: what a lab contributes, what the coordinator accepts, and the atlas.

Fast: contributions and their validation on arrays. Slow: an scPoli reference without one cell line,
a lab that labels it, and an atlas that then predicts it for the lab's cells (real CellBench cells).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedarches.shared.errors import AdapterError
from fedarches.shared.policy import DPPolicy, PrototypePolicy
from fedarches.shared.prototypes import NewTypePrototypes, combine, contribute

KNOWN = ["A", "B"]
OFF = DPPolicy(enabled=False)


def _lab(seed: int = 0) -> tuple[np.ndarray, list[object]]:
    rng = np.random.default_rng(seed)
    latent = np.vstack([rng.normal(0, 0.1, (30, 3)), rng.normal(2, 0.1, (25, 3)), rng.normal(-2, 0.1, (5, 3))])
    labels: list[object] = ["A"] * 30 + ["C"] * 25 + ["D"] * 5
    labels[0] = np.nan  # unlabelled cells are ignored
    return latent, labels


def test_a_lab_contributes_only_new_types_with_enough_cells() -> None:
    latent, labels = _lab()
    contribution, report = contribute(
        latent, labels, KNOWN, bundle_id="b1", policy=PrototypePolicy(release=True, min_cells=20), count_policy=OFF
    )
    assert contribution is not None and contribution.names == ("C",)
    assert (report["released"], report["suppressed"]) == (["C"], ["D"])
    assert report["total_spend"].epsilon == 0  # no noise asked for: none spent
    assert contribution.counts.tolist() == [25.0]
    np.testing.assert_allclose(contribution.means[0], latent[30:55].mean(axis=0))
    nothing, report = contribute(
        latent, labels, KNOWN, bundle_id="b1", policy=PrototypePolicy(release=True, min_cells=26), count_policy=OFF
    )
    assert nothing is None and report == {"released": [], "suppressed": ["C", "D"]}


def test_noise_follows_the_policy_and_its_spend_is_reported() -> None:
    latent, labels = _lab()
    policy = PrototypePolicy(release=True, clip_norm=1.0, noise_multiplier=1.0)
    contribution, report = contribute(latent, labels, KNOWN, bundle_id="b1", policy=policy, count_policy=DPPolicy())
    assert contribution is not None
    clipped = latent[30:55] / np.linalg.norm(latent[30:55], axis=1, keepdims=True)  # norms ~3.5 > 1
    assert not np.allclose(contribution.sums[0], clipped.sum(axis=0))  # noised
    assert np.abs(contribution.sums[0] - clipped.sum(axis=0)).max() < 8  # sd 1: far below 8 sd
    assert report["spend"]["sums"]["mechanism"] == "gaussian" and report["spend"]["sums"]["epsilon"] > 0
    assert report["spend"]["counts"]["mechanism"] == "laplace"


def test_contributions_of_the_same_type_add_their_sums_and_counts() -> None:
    a = NewTypePrototypes("b1", ("C",), np.array([[2.0, 4.0]]), np.array([2.0]))
    b = NewTypePrototypes("b1", ("C", "E"), np.array([[4.0, 2.0], [1.0, 1.0]]), np.array([2.0, 1.0]))
    combined = combine([a, b])
    np.testing.assert_allclose(combined["C"][0], [1.5, 1.5])
    assert combined["C"][1:] == (4.0, 2) and combined["E"][1:] == (1.0, 1)


def _valid() -> tuple[dict, dict]:
    return NewTypePrototypes("b1", ("C",), np.ones((1, 3)), np.array([25.0])).to_arrays()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda a, m: m.update(names=["A"]), "already has"),
        (lambda a, m: m.update(names=["C", "C"]), "1 to|repeat|shapes"),
        (lambda a, m: m.update(names=["x" * 500]), "printable text"),
        (lambda a, m: m.update(names=["bad\x00name"]), "printable text"),
        (lambda a, m: m.update(format="other"), "format tag"),
        (lambda a, m: m.update(names="C"), "1 to"),
        (lambda a, m: a.update(sums=np.ones((1, 4))), "shapes"),
        (lambda a, m: a.update(sums=np.full((1, 3), np.nan)), "not finite"),
        (lambda a, m: a.update(sums=np.ones((1, 3), dtype=np.int64)), "floating-point"),
        (lambda a, m: a.update(counts=np.array([0.5])), "fewer than one"),
        (lambda a, m: a.update(extra=np.ones(1)), "expected 'sums'"),
        (lambda a, m: a.update(sums=np.array(["a", "b", "c"], dtype=object)), "floating-point|malformed"),
        (lambda a, m: m.update(bundle_id=7), "bundle"),
    ],
)
def test_a_hostile_contribution_is_refused_with_one_clear_error(change, problem) -> None:
    arrays, meta = _valid()
    change(arrays, meta)
    with pytest.raises(AdapterError, match=problem):
        NewTypePrototypes.from_arrays(arrays, meta, n_latent=3, known_types=KNOWN)


def test_a_valid_contribution_round_trips() -> None:
    arrays, meta = _valid()
    parsed = NewTypePrototypes.from_arrays(arrays, meta, n_latent=3, known_types=KNOWN)
    assert parsed.names == ("C",) and parsed.counts.tolist() == [25.0]


def test_only_prototype_models_learn_new_types() -> None:
    from fedarches.shared.backends import get_backend

    with pytest.raises(AdapterError, match="cannot learn new cell types"):
        get_backend("scanvi").add_cell_types({}, {"C": np.zeros(10)})


# ---- slow: an scPoli atlas that learns a cell line from a lab -----------------------------------------
@pytest.mark.slow
def test_an_atlas_learns_a_held_out_cell_line_from_a_labs_prototype(tmp_path: Path, keys) -> None:
    import anndata as ad

    from fedarches.client.mapping import MappingOptions, map_query
    from fedarches.server.merge import merge_adapters
    from fedarches.server.reference import ReferenceOptions, build_reference
    from fedarches.shared import crypto
    from fedarches.shared.bundle import ReferenceBundle, write_bundle

    demo = Path(__file__).resolve().parents[2] / "data" / "demo"
    reference = ad.read_h5ad(demo / "reference.h5ad")
    reference = reference[reference.obs["cell_type"] != "H838"].copy()
    options = ReferenceOptions(model="scpoli", n_top_genes=1000, max_epochs=50, progress_bar=False, threads=1)
    contents = build_reference(reference, batch_key="batch", labels_key="cell_type", options=options)
    written = write_bundle(tmp_path / "bundle", contents, crypto.load_private_key(keys[0]))
    bundle = ReferenceBundle.open(written, keys[1])
    assert "H838" not in bundle.label_categories
    lab = ad.read_h5ad(demo / "lab_c.h5ad")  # holds H838
    mapping = MappingOptions(max_epochs=20, progress_bar=False, threads=1)
    result = map_query(lab, bundle, lab_name="lab_c", options=mapping, copy=True)
    assert "H838" not in set(result.adata.obs["predicted_cell_type"].astype(str))
    contribution, report = contribute(
        result.adata.obsm["X_scPoli"], lab.obs["cell_type"], bundle.label_categories, bundle_id=bundle.bundle_id,
        policy=PrototypePolicy(release=True), count_policy=OFF,
    )  # fmt: skip
    assert report["released"] == ["H838"]
    atlas = merge_adapters(
        bundle, [("lab_c", result.adapter)], tmp_path / "atlas", keys[0], new_types=[("lab_c", contribution)]
    )
    assert atlas.label_categories == [*bundle.label_categories, "H838"]
    assert atlas.setup["lineage"][-1]["new_cell_types"] == {"H838": {"labs": ["lab_c"], "cells": 64.0}}
    other = ad.read_h5ad(demo / "lab_b.h5ad")  # no H838: its predictions must not drift to the new type
    again = map_query(lab, atlas, lab_name="lab_c2", options=mapping, copy=True).adata
    predicted = again.obs["predicted_cell_type"].astype(str).to_numpy()
    is_h838 = (lab.obs["cell_type"] == "H838").to_numpy()
    assert (predicted[is_h838] == "H838").mean() > 0.8
    elsewhere = map_query(other, atlas, lab_name="lab_b", options=mapping, copy=True).adata
    assert (elsewhere.obs["predicted_cell_type"].astype(str) == "H838").mean() < 0.1
