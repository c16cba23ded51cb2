"""Calibration and mapping-score math on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fedarches.shared.quality import (
    ReferenceSummary,
    expected_calibration_error,
    fit_reference_summary,
    fit_temperature,
    temperature_scale,
)


def overconfident(rng: np.random.Generator, n: int = 4000, true_t: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits sharpened by ``true_t``, with labels drawn from the calibrated probabilities."""
    logits = rng.normal(scale=1.5, size=(n, 4))
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in calibrated])
    sharp = np.exp(logits * true_t) / np.exp(logits * true_t).sum(1, keepdims=True)
    return sharp, labels


def test_temperature_recovers_the_sharpening_and_lowers_ece() -> None:
    probabilities, labels = overconfident(np.random.default_rng(0))
    t = fit_temperature(probabilities, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    correct = probabilities.argmax(1) == labels
    before = expected_calibration_error(probabilities.max(1), correct)
    after = expected_calibration_error(temperature_scale(probabilities, t).max(1), correct)
    assert after < 0.03 < before


def test_far_cells_are_unknown_and_typical_ones_are_not(tmp_path) -> None:
    rng = np.random.default_rng(1)
    centers = np.array([[0.0] * 10, [8.0] + [0.0] * 9, [0.0, 8.0] + [0.0] * 8])
    labels = np.repeat([0, 1, 2], 300)
    latent = centers[labels] + rng.normal(size=(900, 10))
    summary = fit_reference_summary(latent, labels, ["a", "b", "c"], fit_mask=np.ones(900, bool))
    summary = ReferenceSummary.from_bytes(summary.to_bytes())  # what a lab reads from the bundle
    assert summary.labels == ("a", "b", "c") and summary.temperature == 1.0
    typical = centers[[0, 1, 2] * 100] + rng.normal(size=(300, 10))
    novel = np.array([[-8.0, -8.0] + [0.0] * 8]) + rng.normal(size=(100, 10))
    d_typical, d_novel = summary.distances(typical), summary.distances(novel)
    confident = np.ones(300, np.float32)
    assert summary.unknown(d_typical, confident).mean() < 0.05
    assert summary.unknown(d_novel, confident[:100]).all()
    assert summary.scores(d_novel).max() == 0.0 and np.median(summary.scores(d_typical)) > 0.3
    assert summary.unknown(d_typical[:1], np.array([0.3], np.float32)).all()  # not confident -> Unknown
    assert summary.nbytes < 5_000
