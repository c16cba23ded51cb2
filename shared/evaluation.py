"""Scoring a label transfer against known labels, and harder variants of real counts.

Used by the benchmarks (``make bench``) and open to anyone who holds ground truth for a query:

* :func:`label_transfer_metrics`: accuracy, macro-F1, per-type F1, calibration (ECE) and
  held-out-type detection AUROC from ``obs['predicted_cell_type']`` and ``obs['prediction_confidence']``.
* :func:`thin_counts` / :func:`thin_to_depth`: binomial thinning, each UMI kept independently with
  probability ``p``. A thinned cell is a draw of the same cell sequenced less deeply, which is how
  the benchmarks make real data harder without inventing expression.
* :func:`resample_cells`: a query of any size from real cells, drawn with replacement and each copy
  thinned to its own random depth, so that no two copies are identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from fedarches.shared._constants import ADATA_KEYS, AnnDataKeys
from fedarches.shared.quality import expected_calibration_error

if TYPE_CHECKING:
    from anndata import AnnData


def thin_counts(counts: Any, keep: np.ndarray | float, rng: np.random.Generator) -> sp.csr_matrix:
    """Keep each UMI of cell ``i`` with probability ``keep[i]`` (binomial thinning of integer counts)."""
    matrix = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    data = matrix.data
    if data.size and (np.any(data < 0) or np.any(data != np.round(data))):
        msg = "binomial thinning needs raw integer counts"
        raise ValueError(msg)
    p = np.broadcast_to(np.asarray(keep, dtype=np.float64), (matrix.shape[0],))
    if np.any((p < 0) | (p > 1)):
        msg = "keep probabilities must lie in [0, 1]"
        raise ValueError(msg)
    per_entry = np.repeat(p, np.diff(matrix.indptr))
    matrix.data = rng.binomial(data.astype(np.int64), per_entry).astype(np.float32)
    matrix.eliminate_zeros()
    return matrix


def thin_to_depth(counts: Any, target_umis: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Thin every cell to about ``target_umis`` UMIs (cells already below it are left as they are)."""
    totals = np.asarray(sp.csr_matrix(counts).sum(axis=1)).ravel()
    keep = np.minimum(1.0, target_umis / np.maximum(totals, 1.0))
    return thin_counts(counts, keep, rng)


def resample_cells(
    adata: AnnData, n_cells: int, rng: np.random.Generator, *, keep_range: tuple[float, float] = (0.5, 1.0)
) -> AnnData:
    """``n_cells`` cells drawn with replacement from ``adata`` (raw counts in ``X``), each thinned by U(keep_range)."""
    import anndata as ad

    picks = rng.integers(0, adata.n_obs, size=n_cells)
    keep = rng.uniform(*keep_range, size=n_cells)
    counts = thin_counts(sp.csr_matrix(adata.X)[picks], keep, rng)
    obs = adata.obs.iloc[picks].copy()
    obs["source_cell"] = obs.index.astype(str)
    obs.index = [f"r{i}" for i in range(n_cells)]
    return ad.AnnData(X=counts, obs=obs, var=adata.var.copy())


def label_transfer_metrics(
    truth: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, reference_types: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """Scores of one label transfer.

    Cells whose true type the reference does not know are "unseen": they count for the detection
    AUROC (score ``1 - confidence``), not for accuracy, F1 or ECE, which are over known-type cells.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    truth = np.asarray(truth, dtype=str)
    predicted = np.asarray(predicted, dtype=str)
    confidence = np.asarray(confidence, dtype=np.float64)
    if not truth.shape == predicted.shape == confidence.shape:
        msg = "truth, predicted and confidence must have one entry per cell"
        raise ValueError(msg)
    known = np.isin(truth, list(reference_types))
    correct = predicted == truth
    types = sorted(set(truth[known]))
    per_type = f1_score(truth[known], predicted[known], labels=types, average=None, zero_division=0)
    has_both = 0 < known.sum() < known.size
    return {
        "n_cells": int(truth.size),
        "n_unseen": int((~known).sum()),
        "accuracy": float(accuracy_score(truth[known], predicted[known])) if known.any() else float("nan"),
        "macro_f1": float(np.mean(per_type)) if types else float("nan"),
        "f1_per_type": {t: float(f) for t, f in zip(types, per_type, strict=True)},
        "ece": expected_calibration_error(confidence[known], correct[known]) if known.any() else float("nan"),
        "unseen_auroc": float(roc_auc_score(~known, 1.0 - confidence)) if has_both else None,
    }


def annotated_calls(
    adata: AnnData, truth_key: str = "cell_type", keys: AnnDataKeys = ADATA_KEYS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(truth, predicted, confidence)`` of an AnnData that the lab's mapping annotated."""
    obs = adata.obs
    return (
        obs[truth_key].astype(str).to_numpy(),
        obs[keys.PREDICTION].astype(str).to_numpy(),
        obs[keys.CONFIDENCE].to_numpy(),
    )


def metrics_per_lab(
    cells: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], reference_types: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """:func:`label_transfer_metrics` of each lab's ``(truth, predicted, confidence)`` and of all cells pooled."""
    pooled = [np.concatenate([np.asarray(c[i]) for c in cells.values()]) for i in range(3)]
    return {
        "labs": {lab: label_transfer_metrics(*c, reference_types) for lab, c in cells.items()},
        "overall": label_transfer_metrics(*pooled, reference_types),
    }
