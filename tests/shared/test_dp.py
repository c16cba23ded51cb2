"""OpenDP mechanisms: calibrated to the policy's (ε, δ), noise of the expected size, clipping bounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedarches.shared import dp
from fedarches.shared.policy import AdapterPolicy, DPPolicy


def test_laplace_counts_spend_exactly_the_policy_epsilon() -> None:
    policy = DPPolicy(epsilon=0.5)
    _, d_in, spend = dp.count_measurement(policy)
    assert d_in == 2  # one cell moves one count and one low-confidence count by 1
    assert spend.epsilon == pytest.approx(0.5, rel=1e-6) and spend.delta == 0
    assert spend.scale == pytest.approx(4.0, rel=1e-3)  # discrete Laplace scale = d_in / ε


def test_noise_is_unbiased_and_of_the_calibrated_size() -> None:
    policy = DPPolicy(epsilon=1.0)
    vector = np.array([100, 50, 0, 7, 30, 3])
    draws = np.stack([dp.release_counts(vector, policy)[0] for _ in range(400)])
    errors = draws - vector
    assert abs(errors.mean()) < 0.3
    # discrete Laplace with scale 2: standard deviation close to 2 * sqrt(2)
    assert 2.3 < errors.std() < 3.4
    assert draws.dtype == np.int64


def test_donor_unit_scales_the_sensitivity() -> None:
    cell = dp.count_measurement(DPPolicy(epsilon=1.0))[2]
    donor = dp.count_measurement(DPPolicy(epsilon=1.0, unit="donor", donor_key="donor", max_cells_per_donor=5))[2]
    assert donor.sensitivity == 5 * cell.sensitivity
    assert donor.scale == pytest.approx(5 * cell.scale, rel=1e-3)
    assert donor.epsilon == pytest.approx(1.0, rel=1e-6)


def test_gaussian_meets_epsilon_delta() -> None:
    spend = dp.count_measurement(DPPolicy(mechanism="gaussian", epsilon=1.0, delta=1e-6))[2]
    assert spend.epsilon <= 1.0 + 1e-9 and spend.delta == pytest.approx(1e-6)


def test_dp_off_passes_counts_unchanged() -> None:
    vector = np.array([3, 4])
    out, spend = dp.release_counts(vector, DPPolicy(enabled=False))
    np.testing.assert_array_equal(out, vector)
    assert spend == dp.NO_NOISE


def test_donor_bound_keeps_at_most_m_cells_per_donor() -> None:
    donors = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 5)
    keep = dp.bound_donor_contributions(donors, 3)
    assert [int(keep[donors == d].sum()) for d in "abc"] == [3, 2, 3]


def test_adapter_is_clipped_then_noised() -> None:
    values = np.full(100, 1.0)  # norm 10
    clipped, spend = dp.release_adapter(values, AdapterPolicy(clip_norm=2.0))
    assert np.linalg.norm(clipped) == pytest.approx(2.0)
    assert spend.epsilon == 0  # clipping alone is no guarantee and spends nothing
    noisy, spend = dp.release_adapter(values, AdapterPolicy(clip_norm=2.0, noise_multiplier=1.0))
    assert spend.unit == "dataset" and spend.sensitivity == 4.0 and spend.epsilon > 0
    assert 1.5 < np.std(noisy - clipped) < 2.5  # sd = noise_multiplier * clip_norm
    more = dp.adapter_spend(AdapterPolicy(clip_norm=2.0, noise_multiplier=4.0))
    assert more.epsilon < spend.epsilon
