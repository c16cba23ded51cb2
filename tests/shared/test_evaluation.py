"""Scoring and thinning used by the benchmarks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fedarches.client.options import auto_max_epochs
from fedarches.shared.evaluation import (
    label_transfer_metrics,
    metrics_per_lab,
    resample_cells,
    thin_counts,
    thin_to_depth,
)


def counts(rng: np.random.Generator, n: int = 200, genes: int = 50) -> sp.csr_matrix:
    return sp.csr_matrix(rng.poisson(20.0, size=(n, genes)).astype(np.float32))


def test_thinning_keeps_the_expected_share_and_never_adds_counts() -> None:
    rng = np.random.default_rng(0)
    x = counts(rng)
    thinned = thin_counts(x, 0.25, rng)
    assert (thinned.toarray() <= x.toarray()).all()
    assert thinned.sum() / x.sum() == pytest.approx(0.25, abs=0.01)
    assert np.array_equal(thinned.data, np.round(thinned.data))


def test_thin_to_depth_reaches_the_target_and_leaves_shallow_cells() -> None:
    rng = np.random.default_rng(1)
    x = counts(rng)
    x[0] = x[0] * 0  # an empty cell stays empty
    totals = np.asarray(thin_to_depth(x, 300.0, rng).sum(axis=1)).ravel()
    assert np.median(totals[1:]) == pytest.approx(300, rel=0.1)
    assert totals[0] == 0
    shallow = thin_to_depth(x, 1e9, rng)
    assert (shallow != x).nnz == 0


def test_thinning_refuses_normalized_values() -> None:
    with pytest.raises(ValueError, match="raw integer counts"):
        thin_counts(sp.csr_matrix(np.array([[0.5, 1.0]])), 0.5, np.random.default_rng(0))


def test_resampled_copies_of_a_cell_differ() -> None:
    rng = np.random.default_rng(2)
    adata = ad.AnnData(
        X=counts(rng, n=5), obs=pd.DataFrame({"cell_type": list("abcde")}, index=[f"c{i}" for i in range(5)])
    )
    big = resample_cells(adata, 100, rng)
    assert big.n_obs == 100 and big.obs_names.is_unique
    same = big.obs["source_cell"].to_numpy() == big.obs["source_cell"].iloc[0]
    rows = big.X[np.flatnonzero(same)].toarray()
    assert len(rows) > 1 and not all(np.array_equal(rows[0], r) for r in rows[1:])
    assert (big.obs["cell_type"].to_numpy() == adata.obs.loc[big.obs["source_cell"], "cell_type"].to_numpy()).all()


def test_metrics_count_unseen_cells_only_for_detection() -> None:
    truth = np.array(["A", "A", "B", "B", "X", "X"])
    predicted = np.array(["A", "B", "B", "B", "A", "B"])
    confidence = np.array([0.9, 0.6, 0.8, 0.9, 0.3, 0.2])
    m = label_transfer_metrics(truth, predicted, confidence, ["A", "B"])
    assert m["n_unseen"] == 2
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1_per_type"] == pytest.approx({"A": 2 / 3, "B": 0.8})
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["unseen_auroc"] == pytest.approx(1.0)  # both unseen cells are less confident than every known one
    assert 0 <= m["ece"] <= 1
    no_unseen = label_transfer_metrics(truth[:4], predicted[:4], confidence[:4], ["A", "B"])
    assert no_unseen["unseen_auroc"] is None


def test_metrics_per_lab_pool_the_cells() -> None:
    a = (np.array(["A", "B"]), np.array(["A", "A"]), np.array([0.9, 0.9]))
    b = (np.array(["B", "B"]), np.array(["B", "B"]), np.array([0.9, 0.9]))
    result = metrics_per_lab({"a": a, "b": b}, ["A", "B"])
    assert result["labs"]["a"]["accuracy"] == 0.5 and result["labs"]["b"]["accuracy"] == 1.0
    assert result["overall"]["accuracy"] == 0.75 and result["overall"]["n_cells"] == 4


def test_auto_epochs_are_the_tutorials_100_capped_by_a_step_budget() -> None:
    assert auto_max_epochs(250) == 100 and auto_max_epochs(1_000) == 100  # the tutorial's epochs
    assert auto_max_epochs(10_000) == 15  # 71 steps per epoch, about 1,000 steps
    assert auto_max_epochs(100_000) == 2 and auto_max_epochs(10_000_000) == 2  # at least 2 epochs
    assert auto_max_epochs(250, steps=40) == 20
