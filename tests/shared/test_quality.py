"""Calibration and mapping-score math on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fedarches.shared.quality import (
    ReferenceSummary,
    expected_calibration_error,
    fit_reference_summary,
    fit_temperature,
    held_out_distances,
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
    summary = fit_reference_summary(latent, labels, ["a", "b", "c"])
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


def shifted_batches(rng: np.random.Generator, shifts: list[float], n_per_type: int = 150) -> tuple[np.ndarray, ...]:
    """Three well-separated types in 10 dimensions, one batch per shift (a batch effect along axis 3)."""
    centers = np.array([[0.0] * 10, [8.0] + [0.0] * 9, [0.0, 8.0] + [0.0] * 8])
    latent, labels, batches = [], [], []
    for b, shift in enumerate(shifts):
        codes = np.repeat([0, 1, 2], n_per_type)
        offset = np.zeros(10)
        offset[3] = shift
        latent.append(centers[codes] + offset + rng.normal(size=(codes.size, 10)))
        labels.append(codes)
        batches.append(np.full(codes.size, b))
    return np.vstack(latent), np.concatenate(labels), np.concatenate(batches), centers


def test_leaving_a_batch_out_keeps_a_shifted_lab_known_and_a_novel_type_unknown() -> None:
    """The in-sample 99th percentile calls a lab with a batch shift Unknown; the held-out-batch threshold does not."""
    rng = np.random.default_rng(2)
    latent, labels, batches, centers = shifted_batches(rng, [-1.5, 1.5])
    summary = fit_reference_summary(latent, labels, ["a", "b", "c"], batches=batches)
    assert summary.info["threshold_calibration"] == "leave-one-batch-out"
    lab = centers[np.repeat([0, 1, 2], 200)] + rng.normal(size=(600, 10))
    lab[:, 4] += 3.5  # a new technology: shifted about as far as the reference batches are from each other
    novel = np.array([[-8.0, -8.0] + [0.0] * 8]) + rng.normal(size=(200, 10))
    in_sample = np.percentile(summary.distances(latent), 99)
    d_lab = summary.distances(lab)
    confident = np.ones(len(lab), np.float32)
    assert (d_lab > in_sample).mean() > 0.2  # the old threshold: a fifth or more of known cells Unknown
    assert summary.unknown(d_lab, confident).mean() <= 0.05
    assert summary.unknown(summary.distances(novel), confident[:200]).all()
    assert summary.distance_threshold > in_sample


def test_one_batch_is_held_out_in_random_halves_and_the_threshold_covers_new_cells() -> None:
    rng = np.random.default_rng(3)
    latent, labels, _, centers = shifted_batches(rng, [0.0])
    summary = fit_reference_summary(latent, labels, ["a", "b", "c"])
    assert summary.info["threshold_calibration"] == "random halves"
    assert summary.info["n_cells_distances"] == len(labels)
    fresh = centers[np.repeat([0, 1, 2], 1000)] + rng.normal(size=(3000, 10))
    assert summary.unknown(summary.distances(fresh), np.ones(3000, np.float32)).mean() <= 0.03


def test_a_type_with_fewer_cells_than_latent_dimensions_gets_no_gaussian() -> None:
    """A rare type's Gaussian would be a catch-all; it is left out and named in the summary's info."""
    rng = np.random.default_rng(4)
    latent, labels, batches, _ = shifted_batches(rng, [-0.5, 0.5])
    rare = np.array([[-8.0, 8.0] + [0.0] * 8]) + rng.normal(size=(6, 10))
    summary = fit_reference_summary(
        np.vstack([latent, rare]),
        np.concatenate([labels, np.full(6, 3)]),
        ["a", "b", "c", "rare"],
        batches=np.concatenate([batches, [0, 1] * 3]),
    )
    assert summary.labels == ("a", "b", "c")
    assert summary.info["types_without_gaussian"] == ["rare"] and summary.info["min_cells_per_type"] == 10
    assert summary.unknown(summary.distances(rare), np.ones(6, np.float32)).all()


def test_held_out_distances_score_only_types_the_other_batches_know() -> None:
    """A type present in one batch only has no Gaussian when that batch is out: its cells are not scored."""
    rng = np.random.default_rng(5)
    latent, labels, batches, _ = shifted_batches(rng, [0.0, 0.0])
    only_in_0 = (labels == 2) & (batches == 1)
    labels = np.where(only_in_0, -1, labels)  # type c is labelled in batch 0 only
    distances, how = held_out_distances(latent, labels, batches, smallest=10)
    assert how == "leave-one-batch-out"
    assert distances.size == np.sum((labels == 0) | (labels == 1))
    assert np.isfinite(distances).all()


def test_tiny_references_fall_back_on_in_sample_distances() -> None:
    """Two labelled cells per type: no fit without one of them scores anything; the summary still works."""
    latent = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    summary = fit_reference_summary(latent, np.array([0, 0, 1, 1]), ["a", "b"], batches=np.array([0, 1, 0, 1]))
    assert summary.info["threshold_calibration"] == "in-sample" and summary.labels == ("a", "b")
    assert np.isfinite(summary.distance_threshold)


def test_a_latent_wider_than_its_types_are_large_is_summarised_on_principal_axes() -> None:
    """expiMap: one dimension per gene program; 60 dimensions, 40 cells a type: Gaussians in 30 principal axes."""
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=4.0, size=(3, 60))
    labels = np.repeat([0, 1, 2], 40)
    latent = centres[labels] + rng.normal(size=(120, 60))
    batches = np.tile([0, 1], 60)
    flat = fit_reference_summary(latent, labels, ["a", "b", "c"], batches=batches, max_dimensions=60)
    assert flat.info["min_cells_per_type"] == 2  # no type has 60 cells: the degenerate fallback
    summary = fit_reference_summary(latent, labels, ["a", "b", "c"], batches=batches)
    assert summary.labels == ("a", "b", "c") and summary.means.shape == (3, 30)
    assert summary.info["projected_from"] == 60 and summary.info["dimensions"] == 30
    same_types = centres[labels[:30]] + rng.normal(size=(30, 60))
    novel = rng.normal(scale=4.0, size=(1, 60)) * 3 + rng.normal(size=(30, 60))
    sure = np.ones(30, np.float32)
    assert summary.unknown(summary.distances(same_types), sure).mean() < 0.1
    assert summary.unknown(summary.distances(novel), sure).all()
    restored = ReferenceSummary.from_bytes(summary.to_bytes())
    np.testing.assert_allclose(restored.distances(novel), summary.distances(novel), rtol=1e-5)
    learned = summary.with_types(["d"], novel.mean(axis=0, keepdims=True))  # prototypes come in latent space
    assert learned.unknown(learned.distances(novel), sure).mean() < 0.5
