"""Highly variable genes on shallow references: the loess fallbacks of seurat_v3 selection."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.shared.evaluation import thin_to_depth
from fedarches.shared.features import select_variable_genes

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.mark.parametrize("depth", [None, 500.0, 100.0])
def test_selects_the_asked_number_of_genes_even_when_loess_fails(depth, caplog) -> None:
    reference = ad.read_h5ad(DEMO / "reference.h5ad")
    train = ad.AnnData(X=reference.layers["counts"].copy(), obs=reference.obs[["batch"]].copy())
    train.var_names = reference.var_names
    if depth is not None:
        train.X = thin_to_depth(train.X, depth, np.random.default_rng(0))
    with caplog.at_level(logging.WARNING, logger="fedarches.shared.features"):
        select_variable_genes(train, 1000, "batch")
    assert int(train.var["highly_variable"].sum()) == 1000
    if depth == 100.0:  # this shallow, scikit-misc's per-batch loess fails: the fallback must have run
        assert "HVG loess failed" in caplog.text
