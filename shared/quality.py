"""Mapping quality: calibrated confidence, a per-cell mapping score, and the ``Unknown`` call.

The coordinator fits a :class:`ReferenceSummary` when it builds a bundle, on the reference alone:

* one Gaussian per reference cell type in latent space (mean and Ledoit-Wolf shrunk precision),
  fitted on every labelled cell of the type, for types with at least as many labelled cells as
  the latent has dimensions (below that a covariance is not estimable, and such a Gaussian acts as
  a catch-all for cells of types the reference lacks);
* the **batch shift**: how much farther a batch the Gaussians did not see lies from them than the
  cells they were fitted on. Each labelled reference cell's Mahalanobis distance to the nearest
  type's Gaussian *fitted without its batch* (leave one reference batch out; a reference of one
  batch is split into two random halves per type instead) is compared with its in-sample distance:
  the shift is the ratio of their medians (at least 1). The reference thus shows what a new
  technology or donor does to the distances, measured where it is robust (the median, not a tail
  of a few hundred cells);
* for a latent of more than ``MAX_SUMMARY_DIMENSIONS`` dimensions (expiMap: one per gene program),
  the Gaussians live in the reference latent's first principal components (``projection``), where
  every type has enough cells for a covariance; a lab's cells are projected the same way;
* the distance distribution: the in-sample distances of every labelled cell times the shift (101
  quantiles), and the distance threshold, their 99th percentile;
* a temperature (at least 1) for the classifier's probabilities, fitted on held-out reference
  cells (the validation split of scANVI training) by minimizing the negative log-likelihood.

At the lab, a query cell's **mapping distance** is its Mahalanobis distance to the nearest type,
its **mapping score** the share of reference cells at least that far after the shift (1: typical,
0: farther than every one), and it is called **Unknown** when the distance exceeds the threshold or
its calibrated confidence is below 0.5. None of these numbers is tuned on query labels.

What it promises: if a lab's known-type cells are as far from the Gaussians as a reference batch is
from Gaussians fitted without it (the same distribution of distances up to the median scale), about
1 % of them exceed the threshold (plus those with calibrated confidence below 0.5). It assumes that
a new batch scales the distances as the reference's own batches do; it promises nothing for a lab
further from the reference than its batches are from each other, nor for unseen types (see
docs/research_unknown_pbmc.md for both, measured).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

DISTANCE_PERCENTILE = 99.0
MAX_SUMMARY_DIMENSIONS = 30  # Gaussians need more cells per type than dimensions
UNKNOWN_CONFIDENCE = 0.5
UNKNOWN_LABEL = "Unknown"


@dataclass(frozen=True)
class ReferenceSummary:
    """What a lab needs to score its cells against the reference (a few KB)."""

    labels: tuple[str, ...]
    means: np.ndarray  # (n_types, n_latent)
    precisions: np.ndarray  # (n_types, n_latent, n_latent)
    distance_quantiles: np.ndarray  # (101,) quantiles 0..100 of reference cells' distances
    distance_threshold: float
    temperature: float
    confidence_threshold: float = UNKNOWN_CONFIDENCE
    info: dict[str, Any] | None = None
    projection_center: np.ndarray | None = None  # (n_latent,): the reference latent's mean
    projection_axes: np.ndarray | None = None  # (n_latent, k): its first k principal axes

    @property
    def nbytes(self) -> int:
        """Size of the summary's arrays (means, precisions, distance quantiles, projection) in bytes."""
        arrays = (self.means, self.precisions, self.distance_quantiles, self.projection_center, self.projection_axes)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def project(self, latent: np.ndarray) -> np.ndarray:
        """Latent points in the space of the Gaussians (the latent itself without a projection)."""
        latent = np.asarray(latent, dtype=np.float64)
        if self.projection_axes is None or self.projection_center is None:
            return latent
        return (latent - self.projection_center) @ self.projection_axes

    def to_bytes(self) -> bytes:
        """``.npz`` bytes (readable with ``allow_pickle=False``)."""
        meta = {
            "labels": list(self.labels),
            "distance_threshold": self.distance_threshold,
            "temperature": self.temperature,
            "confidence_threshold": self.confidence_threshold,
            "info": self.info or {},
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            means=self.means.astype(np.float32),
            precisions=self.precisions.astype(np.float32),
            distance_quantiles=self.distance_quantiles.astype(np.float32),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **(
                {"projection_center": self.projection_center, "projection_axes": self.projection_axes}
                if self.projection_axes is not None and self.projection_center is not None
                else {}
            ),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSummary:
        """The summary that :meth:`to_bytes` wrote."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            return cls(
                labels=tuple(meta["labels"]),
                means=npz["means"],
                precisions=npz["precisions"],
                distance_quantiles=npz["distance_quantiles"],
                distance_threshold=float(meta["distance_threshold"]),
                temperature=float(meta["temperature"]),
                confidence_threshold=float(meta["confidence_threshold"]),
                info=meta.get("info") or {},
                projection_center=npz["projection_center"] if "projection_center" in npz else None,
                projection_axes=npz["projection_axes"] if "projection_axes" in npz else None,
            )

    def with_types(self, names: list[str], means: np.ndarray) -> ReferenceSummary:
        """The summary with Gaussians for types learned later from their prototypes alone (no cells).

        Each new Gaussian is centred on its prototype with the reference types' average covariance:
        a lab releases only a mean. Distances, scores and the Unknown call then treat the new types
        like the reference's own; the threshold and temperature stay the reference's.
        """
        covariance = np.mean([np.linalg.inv(p) for p in np.asarray(self.precisions, dtype=np.float64)], axis=0)
        precision = np.linalg.inv(covariance)
        info = {**(self.info or {}), "learned_types": [*((self.info or {}).get("learned_types", [])), *names]}
        return ReferenceSummary(
            labels=(*self.labels, *names),
            means=np.vstack([self.means, self.project(means).astype(self.means.dtype)]),
            precisions=np.concatenate([self.precisions, np.repeat(precision[None], len(names), axis=0)]),
            distance_quantiles=self.distance_quantiles,
            distance_threshold=self.distance_threshold,
            temperature=self.temperature,
            confidence_threshold=self.confidence_threshold,
            info=info,
            projection_center=self.projection_center,
            projection_axes=self.projection_axes,
        )

    def distances(self, latent: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``latent`` to its nearest reference type."""
        return min_mahalanobis(self.project(latent), self.means, self.precisions)

    def scores(self, distances: np.ndarray) -> np.ndarray:
        """Share of reference cells at least as far from their type (1 typical, 0 beyond all)."""
        cdf = np.interp(distances, self.distance_quantiles, np.linspace(0.0, 1.0, self.distance_quantiles.size))
        return (1.0 - cdf).astype(np.float32)

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities."""
        return temperature_scale(probabilities, self.temperature)

    def unknown(self, distances: np.ndarray, calibrated_confidence: np.ndarray) -> np.ndarray:
        """The Unknown call: far from every reference type, or not confident after calibration."""
        return (distances > self.distance_threshold) | (calibrated_confidence < self.confidence_threshold)


def fit_reference_summary(
    latent: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    *,
    batches: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    probability_labels: np.ndarray | None = None,
    seed: int = 0,
    max_dimensions: int = MAX_SUMMARY_DIMENSIONS,
) -> ReferenceSummary:
    """Fit the summary from reference latents, integer labels (-1 = unlabelled) and batch codes.

    Gaussians come from every labelled cell of types with at least ``n_latent`` of them; the
    threshold and the mapping score's quantiles from their in-sample distances scaled by the batch
    shift that :func:`held_out_distances` measures.
    ``probabilities``/``probability_labels`` (held-out cells' classifier output and their true
    label codes) fit the temperature; without them it stays 1. A latent of more than
    ``max_dimensions`` dimensions is first projected on its first ``max_dimensions`` principal axes.
    """
    labels = np.asarray(labels)
    labelled = labels >= 0
    batches = np.zeros(len(labels), dtype=int) if batches is None else np.asarray(batches).ravel()
    center, axes = principal_axes(latent[labelled] if labelled.any() else latent, max_dimensions)
    if axes is not None:
        latent = (np.asarray(latent, dtype=np.float64) - center) @ axes
    smallest = smallest_fitted_type(labels, latent.shape[1])
    codes, means, precisions = fit_gaussians(latent, labels, labelled, smallest)
    fitted = labelled & np.isin(labels, codes)
    in_sample = min_mahalanobis(latent[fitted], means, precisions)
    held_out, calibration = held_out_distances(latent, labels, batches, smallest, seed=seed)
    shift = 1.0
    if held_out.size:
        shift = max(1.0, float(np.median(held_out) / np.median(in_sample)))
    else:  # no cell could be scored without its batch: no shift measured
        calibration = "in-sample"
    distances = in_sample * shift
    quantiles = np.percentile(distances, np.linspace(0, 100, 101))
    temperature = 1.0
    if probabilities is not None and probability_labels is not None and len(probability_labels) > 0:
        temperature = fit_temperature(probabilities, probability_labels)
    counts = np.bincount(labels[labelled], minlength=len(label_names))
    return ReferenceSummary(
        labels=tuple(label_names[i] for i in codes),
        means=means.astype(np.float32),
        precisions=precisions.astype(np.float32),
        distance_quantiles=quantiles.astype(np.float32),
        distance_threshold=float(np.percentile(distances, DISTANCE_PERCENTILE)),
        temperature=float(temperature),
        info={
            "n_cells_gaussians": int(fitted.sum()),
            "min_cells_per_type": smallest,
            "types_without_gaussian": [label_names[i] for i in range(len(label_names)) if 0 < counts[i] < smallest],
            "threshold_calibration": calibration,
            "batch_shift": shift,
            "n_cells_distances": int(distances.size),
            "n_cells_held_out": int(held_out.size),
            "n_cells_temperature": 0 if probability_labels is None else len(probability_labels),
            "distance_percentile": DISTANCE_PERCENTILE,
            **({"projected_from": int(axes.shape[0]), "dimensions": int(axes.shape[1])} if axes is not None else {}),
        },
        projection_center=None if axes is None else center.astype(np.float32),
        projection_axes=None if axes is None else axes.astype(np.float32),
    )


def principal_axes(latent: np.ndarray, max_dimensions: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean of ``latent`` and its first ``max_dimensions`` principal axes (columns; ``None`` if it has no more)."""
    latent = np.asarray(latent, dtype=np.float64)
    center = latent.mean(axis=0)
    if latent.shape[1] <= max_dimensions:
        return center, None
    _, _, components = np.linalg.svd(latent - center, full_matrices=False)
    return center, components[:max_dimensions].T


def smallest_fitted_type(labels: np.ndarray, n_latent: int) -> int:
    """Fewest labelled cells a type needs for a Gaussian: ``n_latent``, or 2 when no type has that many."""
    counts = np.bincount(labels[labels >= 0]) if np.any(labels >= 0) else np.zeros(1, int)
    return max(n_latent, 2) if counts.max() >= max(n_latent, 2) else 2


def fit_gaussians(
    latent: np.ndarray, labels: np.ndarray, mask: np.ndarray, smallest: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ledoit-Wolf Gaussians of the types with at least ``smallest`` labelled cells in ``mask``.

    Returns the fitted types' codes, means ``(n, n_latent)`` and precisions ``(n, n_latent, n_latent)``.
    """
    from sklearn.covariance import LedoitWolf

    mask = mask & (labels >= 0)
    codes = np.array([c for c in np.unique(labels[mask]) if np.sum(mask & (labels == c)) >= smallest], dtype=int)
    n_latent = latent.shape[1]
    means, precisions = np.zeros((codes.size, n_latent)), np.zeros((codes.size, n_latent, n_latent))
    for row, code in enumerate(codes):
        estimate = LedoitWolf().fit(latent[mask & (labels == code)])
        means[row], precisions[row] = estimate.location_, estimate.precision_
    return codes, means, precisions


def held_out_distances(
    latent: np.ndarray, labels: np.ndarray, batches: np.ndarray, smallest: int, *, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Each labelled cell's distance to Gaussians fitted without its group, pooled; and how it was held out.

    Groups are the reference batches (leave one batch out) or, for a single batch, two random halves
    of every type. A cell is scored only when its own type has a Gaussian in the fit without it, so
    the distances describe known types seen from a new batch, not types one batch lacks.
    """
    labelled = labels >= 0
    if np.unique(batches[labelled]).size > 1:
        groups, how = batches, "leave-one-batch-out"
    else:
        groups, how = np.zeros(len(labels), dtype=int), "random halves"
        rng = np.random.default_rng(seed)
        for code in np.unique(labels[labelled]):
            cells = rng.permutation(np.flatnonzero(labels == code))
            groups[cells[: len(cells) // 2]] = 1
    pooled = []
    for group in np.unique(groups[labelled]):
        codes, means, precisions = fit_gaussians(latent, labels, labelled & (groups != group), smallest)
        scored = labelled & (groups == group) & np.isin(labels, codes)
        if scored.any():
            pooled.append(min_mahalanobis(latent[scored], means, precisions))
    return (np.concatenate(pooled), how) if pooled else (np.empty(0), how)


def min_mahalanobis(latent: np.ndarray, means: np.ndarray, precisions: np.ndarray) -> np.ndarray:
    """Distance of each row to the nearest of the Gaussians ``(means, precisions)``."""
    latent = np.asarray(latent, dtype=np.float64)
    squared = np.stack(
        [np.einsum("ij,jk,ik->i", latent - mu, prec, latent - mu) for mu, prec in zip(means, precisions, strict=True)]
    )
    return np.sqrt(np.maximum(squared.min(axis=0), 0.0)).astype(np.float32)


def temperature_scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``, row-wise."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Temperature in [1, 20] minimizing the negative log-likelihood of ``labels`` (scipy, bounded search).

    Never below 1: on held-out reference cells scANVI is often right every time, and the NLL then
    rewards sharpening without limit; a sharper classifier would only be more overconfident on
    queries, which carry batch effects the reference split does not.
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        scaled = temperature_scale(probabilities, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, 1.0))))

    best = minimize_scalar(nll, bounds=(0.0, np.log(20.0)), method="bounded")
    return float(max(1.0, np.exp(best.x)))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE from each cell's confidence and whether its call was right (torchmetrics, l1, equal bins)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    return float(
        binary_calibration_error(
            torch.as_tensor(np.asarray(confidence), dtype=torch.float32),
            torch.as_tensor(np.asarray(correct), dtype=torch.long),
            n_bins=n_bins,
            norm="l1",
        )
    )
