"""Differential privacy for what leaves a lab, with OpenDP's mechanisms and accounting.

Why OpenDP: it ships vetted samplers (discrete Laplace and discrete Gaussian on integer counts,
drawn from a cryptographically secure source without floating-point leaks) together with the
privacy map of each mechanism, so the ε a release spends is computed by the same library that
draws the noise. dp-accounting only does the accounting, and a hand-written sampler is exactly
what a privacy review should not have to audit.

- :func:`release_counts`: noise on the integer vector "cells per type, then low-confidence cells
  per type". One cell changes one entry of each half by one: L1 sensitivity 2, L2 sensitivity
  √2; with a donor unit and at most ``m`` cells per donor, 2m and √2·m.
- :func:`release_adapter`: clip the adapter to L2 norm ``C`` and add Gaussian noise of sd
  ``noise_multiplier · C``. Any two datasets give clipped adapters at most 2C apart, so the ε
  holds for the lab's whole dataset as the unit (and so for any cell or donor in it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedarches.shared.policy import AdapterPolicy, DPPolicy


@dataclass(frozen=True)
class PrivacySpend:
    """What one release costs: mechanism, (ε, δ), the privacy unit and the noise scale used."""

    mechanism: str
    epsilon: float
    delta: float
    unit: str
    scale: float
    sensitivity: float

    def to_dict(self) -> dict[str, Any]:
        """The spend's fields as a dict."""
        return asdict(self)


NO_NOISE = PrivacySpend("none", 0.0, 0.0, "none", 0.0, 0.0)


def combined(*spends: PrivacySpend) -> PrivacySpend:
    """Basic composition of several spends into one (ε and δ add up)."""
    used = [s for s in spends if s.mechanism != "none"]
    if not used:
        return NO_NOISE
    return PrivacySpend(
        mechanism="+".join(s.mechanism for s in used),
        epsilon=sum(s.epsilon for s in used),
        delta=sum(s.delta for s in used),
        unit="+".join(dict.fromkeys(s.unit for s in used if s.unit != "none")) or "none",
        scale=max(s.scale for s in used),
        sensitivity=max(s.sensitivity for s in used),
    )


def warm_up() -> None:
    """Import OpenDP now (about 1.5 s) rather than at a process's first release."""
    _opendp()


def _opendp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@functools.lru_cache(maxsize=32)
def count_measurement(policy: DPPolicy) -> tuple[Any, Any, PrivacySpend]:
    """The OpenDP measurement on integer count vectors calibrated to ``policy``'s (ε, δ).

    Returns the measurement, its input distance (sensitivity) and the spend it maps to. Cached per
    (frozen) policy: the calibration is a binary search, and a release checks the spend before it
    draws the noise.
    """
    dp = _opendp()
    domain = dp.vector_domain(dp.atom_domain(T=int))
    bound = policy.contribution_bound
    if policy.mechanism == "laplace":
        d_in = 2 * bound

        def make(scale: float) -> Any:
            return dp.m.make_laplace(domain, dp.l1_distance(T=int), scale=scale)

        scale = dp.binary_search_param(make, d_in=d_in, d_out=policy.epsilon)
        measurement = make(scale)
        epsilon, delta = float(measurement.map(d_in)), 0.0
    else:
        d_in = math.sqrt(2.0) * bound

        def make(scale: float) -> Any:
            gaussian = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale)
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), delta=policy.delta)

        scale = dp.binary_search_param(make, d_in=d_in, d_out=(policy.epsilon, policy.delta))
        measurement = make(scale)
        epsilon, delta = (float(v) for v in measurement.map(d_in))
    spend = PrivacySpend(policy.mechanism, epsilon, delta, policy.unit, float(scale), float(d_in))
    return measurement, d_in, spend


def release_counts(vector: np.ndarray, policy: DPPolicy) -> tuple[np.ndarray, PrivacySpend]:
    """``vector`` (non-negative integers) with noise for ``policy``; unchanged when DP is off."""
    vector = np.asarray(vector, dtype=np.int64)
    if not policy.enabled:
        return vector.copy(), NO_NOISE
    if vector.size and (vector.min() < 0 or vector.max() > np.iinfo(np.int32).max):
        msg = "counts must lie in [0, 2**31)"
        raise ValueError(msg)
    measurement, _, spend = count_measurement(policy)
    noisy = np.asarray(measurement([int(v) for v in vector]), dtype=np.int64)
    return noisy, spend


def bound_donor_contributions(donors: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Mask keeping at most ``max_cells`` cells per donor (a seeded random subset of larger donors)."""
    donors = np.asarray(donors, dtype=object)
    keep = np.zeros(donors.shape[0], dtype=bool)
    rng = np.random.default_rng(seed)
    for donor in dict.fromkeys(donors.tolist()):
        index = np.flatnonzero(donors == donor)
        if index.size > max_cells:
            index = rng.choice(index, size=max_cells, replace=False)
        keep[index] = True
    return keep


def adapter_spend(policy: AdapterPolicy) -> PrivacySpend:
    """The (ε, δ) of clipping to ``clip_norm`` plus Gaussian noise, with the lab's dataset as the unit."""
    if policy.clip_norm <= 0 or policy.noise_multiplier <= 0:
        return NO_NOISE
    return _adapter_release(policy)[1]


def release_adapter(values: np.ndarray, policy: AdapterPolicy) -> tuple[np.ndarray, PrivacySpend]:
    """Clip the flat adapter ``values`` to ``policy.clip_norm`` and add Gaussian noise.

    With ``clip_norm`` 0 the values pass unchanged; with noise 0 they are only clipped (no ε).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if policy.clip_norm <= 0:
        return values.copy(), NO_NOISE
    norm = float(np.linalg.norm(values))
    clipped = values * min(1.0, policy.clip_norm / norm) if norm > 0 else values.copy()
    if policy.noise_multiplier <= 0:
        return clipped, PrivacySpend("clip", 0.0, 0.0, "none", 0.0, 0.0)
    gaussian, spend = _adapter_release(policy)
    return np.asarray(gaussian(clipped.tolist()), dtype=np.float64), spend


def sums_spend(*, clip_norm: float, noise_multiplier: float, delta: float, bound: int = 1) -> PrivacySpend:
    """The (ε, δ) of :func:`release_sums` under these settings, computed without drawing noise."""
    if clip_norm <= 0 or noise_multiplier <= 0:
        return NO_NOISE
    return _sums_release(clip_norm, noise_multiplier, delta, bound)[1]


def release_sums(sums: np.ndarray, *, clip_norm: float, noise_multiplier: float, delta: float, bound: int = 1
                 ) -> tuple[np.ndarray, PrivacySpend]:  # fmt: skip
    """Gaussian noise of sd ``noise_multiplier · clip_norm · bound`` on sums of latents clipped to ``clip_norm``.

    One privacy unit (a cell, or a donor of at most ``bound`` cells) moves the stacked sums by at most
    ``2 · clip_norm · bound`` in L2 (its cells leave one type's sum and may join another's).
    With ``noise_multiplier`` 0 the sums pass unchanged (no ε).
    """
    sums = np.asarray(sums, dtype=np.float64)
    if clip_norm <= 0 or noise_multiplier <= 0:
        return sums.copy(), NO_NOISE
    gaussian, spend = _sums_release(clip_norm, noise_multiplier, delta, bound)
    return np.asarray(gaussian(sums.ravel().tolist()), dtype=np.float64).reshape(sums.shape), spend


def _adapter_release(policy: AdapterPolicy) -> tuple[Any, PrivacySpend]:
    """The Gaussian mechanism of an adapter clipped to ``clip_norm``: one lab's dataset changes it by 2 x clip_norm."""
    scale, d_in = policy.noise_multiplier * policy.clip_norm, 2.0 * policy.clip_norm
    return _gaussian_release(scale, d_in, policy.delta, "dataset")


def _sums_release(clip_norm: float, noise_multiplier: float, delta: float, bound: int) -> tuple[Any, PrivacySpend]:
    d_in = 2.0 * clip_norm * bound
    return _gaussian_release(noise_multiplier * d_in / 2.0, d_in, delta, "cell" if bound == 1 else "donor")


def _gaussian_release(scale: float, d_in: float, delta: float, unit: str) -> tuple[Any, PrivacySpend]:
    """OpenDP's Gaussian mechanism on float vectors of L2 sensitivity ``d_in``, and its (ε, δ) at ``delta``."""
    dp = _opendp()
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    gaussian = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale)
    measurement = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), delta=delta)
    epsilon, spent_delta = (float(v) for v in measurement.map(d_in))
    return gaussian, PrivacySpend("gaussian", epsilon, spent_delta, unit, float(scale), float(d_in))
