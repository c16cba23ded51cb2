"""What the benchmarks score: label transfer with the Unknown call, imputed proteins, released compositions.

* :func:`scores`: :func:`fedarches.shared.evaluation.metrics_per_lab` of each lab and of all cells pooled, with
  :func:`unknown_rates` (unseen-type cells called Unknown, known-type cells called Unknown). A method without an
  Unknown call of its own calls Unknown the cells whose confidence is below :data:`CONFIDENCE_UNKNOWN`
  (:func:`cells_of`).
* :func:`known_type_scores`: accuracy, macro-F1 and the Unknown rate over cells of the reference's types, from an
  annotated ``obs`` (the backend benchmark).
* :func:`protein_correlations`: Pearson r per protein between imputed and measured values, after ``log1p`` or
  :func:`clr`.
* :func:`tv_distance`: total variation distance between two compositions (the privacy-utility evaluation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.evaluation import annotated_calls, metrics_per_lab

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

# Unknown call of a method without one: top probability below 0.5 (fedarches' confidence rule; CellTypist's
# "prob match" with its default p_thres 0.5 leaves exactly these cells unassigned)
CONFIDENCE_UNKNOWN = 0.5

Calls = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # truth, predicted, confidence, called Unknown
Cells = dict[str, Calls]  # lab -> its cells' calls


def cells_of(
    adata: ad.AnnData, predicted: np.ndarray, confidence: np.ndarray, unknown: np.ndarray | None = None
) -> Calls:
    """One lab's calls; ``unknown`` defaults to confidence below :data:`CONFIDENCE_UNKNOWN`."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if unknown is None:
        unknown = confidence < CONFIDENCE_UNKNOWN
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    return truth, np.asarray(predicted, dtype=str), confidence, np.asarray(unknown, dtype=bool)


def fedarches_calls(adata: ad.AnnData) -> Calls:
    """The calls of an AnnData that ``map_query`` annotated, its own Unknown call (``is_unknown``) included."""
    _, predicted, confidence = annotated_calls(adata)
    obs = adata.obs
    unknown = obs[ADATA_KEYS.UNKNOWN].to_numpy(dtype=bool) if ADATA_KEYS.UNKNOWN in obs else None  # None: no summary
    return cells_of(adata, predicted, confidence, unknown)


def unknown_rates(truth: np.ndarray, unknown: np.ndarray, reference_types: list[str] | tuple[str, ...]) -> dict:
    """Share of unseen-type cells called Unknown (detection; None without such cells) and of known-type cells."""
    known = np.isin(truth, list(reference_types))
    return {
        "unseen_unknown": float(unknown[~known].mean()) if (~known).any() else None,
        "known_unknown": float(unknown[known].mean()) if known.any() else None,
    }


def scores(cells: Cells, reference_types: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """:func:`~fedarches.shared.evaluation.metrics_per_lab` of each lab and the pool, with :func:`unknown_rates`."""
    out = metrics_per_lab({lab: c[:3] for lab, c in cells.items()}, reference_types)
    for lab, c in cells.items():
        out["labs"][lab].update(unknown_rates(c[0], c[3], reference_types))
    pooled = [np.concatenate([c[i] for c in cells.values()]) for i in (0, 3)]
    out["overall"].update(unknown_rates(*pooled, reference_types))
    return out


def known_type_scores(bundle: Any, truth: np.ndarray, obs: pd.DataFrame) -> dict[str, Any]:
    """Accuracy and macro-F1 over cells of reference types, and how many of those are called Unknown."""
    from fedarches.shared.evaluation import label_transfer_metrics

    predicted = obs[ADATA_KEYS.PREDICTION].astype(str).to_numpy()
    metrics = label_transfer_metrics(truth, predicted, obs[ADATA_KEYS.CONFIDENCE].to_numpy(), bundle.label_categories)
    known = np.isin(truth, bundle.label_categories)
    unknown = obs[ADATA_KEYS.UNKNOWN].to_numpy(dtype=bool) if ADATA_KEYS.UNKNOWN in obs else None
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "f1_per_type": metrics["f1_per_type"],
        "n_known": int(known.sum()),
        "unknown_known": float(unknown[known].mean()) if unknown is not None else None,
    }


def clr(values: np.ndarray) -> np.ndarray:
    """Centred log-ratio per cell across proteins, as Seurat's ``NormalizeData(method='CLR', margin=1)``."""
    logs = np.log1p(values)
    return np.log1p(values / np.exp(logs.mean(axis=1, keepdims=True)))


TRANSFORMS = {"log1p": np.log1p, "clr": clr}


def protein_correlations(imputed: pd.DataFrame, measured: pd.DataFrame, transform: str) -> dict[str, float | None]:
    """Pearson r per protein between transformed imputed and measured values; None for a constant column.

    ``transform``: ``"log1p"`` of each value, or ``"clr"`` per cell across the proteins (imputed and
    measured alike), which removes each cell's overall antibody capture.
    """
    a = TRANSFORMS[transform](np.asarray(imputed, dtype=np.float64))
    b = TRANSFORMS[transform](measured[list(imputed.columns)].to_numpy(dtype=np.float64))
    out: dict[str, float | None] = {}
    for j, name in enumerate(imputed.columns):
        x, y = a[:, j] - a[:, j].mean(), b[:, j] - b[:, j].mean()
        denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
        out[str(name)] = float((x * y).sum() / denominator) if denominator > 0 else None
    return out


def tv_distance(counts: np.ndarray, truth: np.ndarray) -> float:
    """Total variation distance between the proportions of ``counts`` and of ``truth`` (uniform if no counts)."""
    p = counts / counts.sum() if counts.sum() > 0 else np.full_like(truth, 1 / truth.size, dtype=float)
    return 0.5 * float(np.abs(p - truth / truth.sum()).sum())
