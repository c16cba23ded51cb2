"""Mapping quality: calibrated confidence, a per-cell mapping score, and the ``Unknown`` call.

The coordinator fits a :class:`ReferenceSummary` when it builds a bundle, on the reference alone:

* one Gaussian per reference cell type in latent space (mean and Ledoit-Wolf shrunk precision),
  fitted on the labelled training cells;
* the distribution of each labelled reference cell's Mahalanobis distance to its nearest type
  (101 quantiles), and the distance threshold (99th percentile);
* a temperature (at least 1) for the classifier's probabilities, fitted on held-out reference
  cells (the validation split of scANVI training) by minimizing the negative log-likelihood.

At the lab, a query cell's **mapping distance** is its Mahalanobis distance to the nearest type,
its **mapping score** the share of reference cells at least that far (1: typical, 0: farther than
every reference cell), and it is called **Unknown** when the distance exceeds the threshold or its
calibrated confidence is below 0.5. None of these numbers is tuned on query labels.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

DISTANCE_PERCENTILE = 99.0
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

    @property
    def nbytes(self) -> int:
        return int(self.means.nbytes + self.precisions.nbytes + self.distance_quantiles.nbytes)

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
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSummary:
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
            )

    def distances(self, latent: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``latent`` to its nearest reference type."""
        return min_mahalanobis(latent, self.means, self.precisions)

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
    fit_mask: np.ndarray,
    probabilities: np.ndarray | None = None,
    probability_labels: np.ndarray | None = None,
) -> ReferenceSummary:
    """Fit the summary from reference latents and integer labels (-1 = unlabelled).

    Gaussians come from labelled cells in ``fit_mask``; the distance distribution from every
    labelled cell. ``probabilities``/``probability_labels`` (held-out cells' classifier output and
    their true label codes) fit the temperature; without them it stays 1.
    """
    from sklearn.covariance import LedoitWolf

    labelled = labels >= 0
    n_latent = latent.shape[1]
    present = [i for i in range(len(label_names)) if np.sum(labelled & fit_mask & (labels == i)) >= 2]
    means = np.zeros((len(present), n_latent))
    precisions = np.zeros((len(present), n_latent, n_latent))
    for row, code in enumerate(present):
        cells = latent[labelled & fit_mask & (labels == code)]
        estimate = LedoitWolf().fit(cells)
        means[row], precisions[row] = estimate.location_, estimate.precision_
    reference_distances = min_mahalanobis(latent[labelled], means, precisions)
    quantiles = np.percentile(reference_distances, np.linspace(0, 100, 101))
    temperature = 1.0
    if probabilities is not None and probability_labels is not None and len(probability_labels) > 0:
        temperature = fit_temperature(probabilities, probability_labels)
    return ReferenceSummary(
        labels=tuple(label_names[i] for i in present),
        means=means.astype(np.float32),
        precisions=precisions.astype(np.float32),
        distance_quantiles=quantiles.astype(np.float32),
        distance_threshold=float(np.percentile(reference_distances, DISTANCE_PERCENTILE)),
        temperature=float(temperature),
        info={
            "n_cells_gaussians": int(np.sum(labelled & fit_mask)),
            "n_cells_distances": int(np.sum(labelled)),
            "n_cells_temperature": 0 if probability_labels is None else len(probability_labels),
            "distance_percentile": DISTANCE_PERCENTILE,
        },
    )


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
