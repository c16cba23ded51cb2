"""Prototypes of cell types an atlas lacks: what a lab contributes and how contributions combine.

A lab whose query carries labels for a type the atlas does not know contributes that type's
prototype as a *sum* of its cells' latents (each clipped to ``clip_norm`` when the policy asks) and a
cell *count*, both noised under the lab's policy, and only for types with at least ``min_cells``
cells. Sums and counts add across labs, so several labs holding the same type combine into one
prototype ``sum / count`` without any lab's mean being needed (the form a secure sum takes).

:class:`NewTypePrototypes` is the wire form; :meth:`NewTypePrototypes.from_arrays` validates what
arrives (names, shapes, finite values) and raises :class:`~fedarches.shared.errors.AdapterError`,
never anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedarches.shared import dp
from fedarches.shared.errors import AdapterError
from fedarches.shared.policy import DPPolicy, PrototypePolicy

PROTOTYPES_FORMAT = "fedarches.new-type-prototypes"
PROTOTYPES_TENSOR = "prototypes"  # the state-dict entry where a prototype model keeps them (types x latent)
MAX_NAME_CHARS = 100
MAX_TYPES = 1_000
MAX_ABS_SUM = 1e12
MAX_LATENT = 10_000


@dataclass(frozen=True)
class NewTypePrototypes:
    """One lab's contribution: per new cell type, the (noised) latent sum and cell count."""

    bundle_id: str
    names: tuple[str, ...]
    sums: np.ndarray  # (types, n_latent) float64
    counts: np.ndarray  # (types,) float64, > 0

    @property
    def means(self) -> np.ndarray:
        """The contributed prototypes, ``sums / counts``."""
        return self.sums / self.counts[:, None]

    def to_json(self) -> dict[str, Any]:
        """The contribution as JSON values (what the lab's ledger records)."""
        return {
            "bundle_id": self.bundle_id,
            "names": list(self.names),
            "sums": self.sums.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewTypePrototypes:
        """The contribution :meth:`to_json` wrote."""
        return cls(
            str(data["bundle_id"]),
            tuple(data["names"]),
            np.asarray(data["sums"], dtype=np.float64),
            np.asarray(data["counts"], dtype=np.float64),
        )

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Plain arrays and JSON-safe metadata (the form that travels in a Flower record)."""
        meta = {"format": PROTOTYPES_FORMAT, "bundle_id": self.bundle_id, "names": list(self.names)}
        return {"sums": np.asarray(self.sums), "counts": np.asarray(self.counts)}, meta

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Any],
        meta: Mapping[str, Any],
        *,
        n_latent: int | None = None,
        known_types: Sequence[str] = (),
    ) -> NewTypePrototypes:
        """Validate a contribution that arrived from a lab; :class:`AdapterError` names what is wrong.

        ``n_latent`` (the atlas's latent size) and ``known_types`` (its cell types) are checked when given.
        """
        try:
            return cls._validated(arrays, meta, n_latent=n_latent, known_types=set(known_types))
        except AdapterError:
            raise
        except Exception as err:  # noqa: BLE001 - anything a hostile payload provokes becomes one refusal
            msg = f"new-type prototypes are malformed ({type(err).__name__})"
            raise AdapterError(msg) from None

    @classmethod
    def _validated(
        cls, arrays: Mapping[str, Any], meta: Mapping[str, Any], *, n_latent: int | None, known_types: set[str]
    ) -> NewTypePrototypes:
        if not isinstance(meta, Mapping) or meta.get("format") != PROTOTYPES_FORMAT:
            msg = "new-type prototypes lack their format tag"
            raise AdapterError(msg)
        names = meta.get("names")
        if not isinstance(names, list) or not 0 < len(names) <= MAX_TYPES:
            msg = f"new-type prototypes must name 1 to {MAX_TYPES} cell types"
            raise AdapterError(msg)
        if not all(isinstance(n, str) and 0 < len(n.strip()) <= MAX_NAME_CHARS and n.isprintable() for n in names):
            msg = f"a new cell type's name must be printable text of 1 to {MAX_NAME_CHARS} characters"
            raise AdapterError(msg)
        if len(set(names)) != len(names) or set(names) & known_types:
            msg = "new-type prototypes repeat a name, or name a type the atlas already has"
            raise AdapterError(msg)
        if set(arrays) != {"sums", "counts"}:
            msg = f"new-type prototypes hold arrays {sorted(arrays)[:4]}, expected 'sums' and 'counts'"
            raise AdapterError(msg)
        sums = np.asarray(arrays["sums"])
        counts = np.asarray(arrays["counts"])
        if sums.dtype.kind != "f" or counts.dtype.kind != "f":
            msg = "new-type prototype sums and counts must be floating-point"
            raise AdapterError(msg)
        width = n_latent if n_latent is not None else (sums.shape[1] if sums.ndim == 2 else -1)
        if sums.shape != (len(names), width) or counts.shape != (len(names),) or not 0 < width <= MAX_LATENT:
            expected = (len(names), n_latent or "n_latent")
            msg = f"new-type prototypes have shapes {sums.shape} and {counts.shape}, expected {expected}"
            raise AdapterError(msg)
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or np.abs(sums).max() > MAX_ABS_SUM:
            msg = "new-type prototype sums or counts are not finite, or implausibly large"
            raise AdapterError(msg)
        if (counts < 1).any():
            msg = "a new-type prototype counts fewer than one cell"
            raise AdapterError(msg)
        bundle_id = meta.get("bundle_id")
        if not isinstance(bundle_id, str):
            msg = "new-type prototypes do not name their bundle"
            raise AdapterError(msg)
        return cls(bundle_id, tuple(names), sums.astype(np.float64), counts.astype(np.float64))


def new_type_sizes(labels: Sequence[Any], known_types: Sequence[str]) -> dict[str, int]:
    """Cells per labelled type that ``known_types`` lacks (missing labels ignored), sorted by name."""
    known = set(known_types)
    sizes: dict[str, int] = {}
    for value in labels:
        if not _missing(value) and str(value) not in known:
            sizes[str(value)] = sizes.get(str(value), 0) + 1
    return dict(sorted(sizes.items()))


def qualifying_types(labels: Sequence[Any], known_types: Sequence[str], min_cells: int) -> list[str]:
    """The new types (labels not in ``known_types``) with at least ``min_cells`` cells: what a release would hold."""
    return [name for name, size in new_type_sizes(labels, known_types).items() if size >= min_cells]


def expected_spend(
    labels: Sequence[Any], known_types: Sequence[str], policy: PrototypePolicy, count_policy: DPPolicy
) -> dp.PrivacySpend:
    """What :func:`contribute` will spend (sums and counts), known before any noise is drawn."""
    if not policy.release or not qualifying_types(labels, known_types, policy.min_cells):
        return dp.NO_NOISE
    sums = dp.sums_spend(
        clip_norm=policy.clip_norm, noise_multiplier=policy.noise_multiplier, delta=policy.delta,
        bound=count_policy.contribution_bound,
    )  # fmt: skip
    counts = dp.count_measurement(count_policy)[2] if count_policy.enabled else dp.NO_NOISE
    return dp.combined(sums, counts)


def contribute(
    latent: np.ndarray,
    labels: Sequence[Any],
    known_types: Sequence[str],
    *,
    bundle_id: str,
    policy: PrototypePolicy,
    count_policy: DPPolicy,
) -> tuple[NewTypePrototypes | None, dict[str, Any]]:
    """A lab's prototypes of the types in ``labels`` that ``known_types`` lacks, under ``policy``.

    Cells with a missing label are ignored; types with fewer than ``policy.min_cells`` cells are
    suppressed. Returns the contribution (``None`` when nothing may leave) and a report for the lab:
    types released, types suppressed, and the privacy spend of sums and counts.
    """
    labels = np.asarray([None if _missing(v) else str(v) for v in labels], dtype=object)
    latent = np.asarray(latent, dtype=np.float64)
    sizes = new_type_sizes(labels, known_types)
    released = [name for name, size in sizes.items() if size >= policy.min_cells]  # as qualifying_types
    report: dict[str, Any] = {"released": released, "suppressed": [n for n in sizes if n not in released]}
    if not released:
        return None, report
    if policy.clip_norm > 0:
        norms = np.linalg.norm(latent, axis=1, keepdims=True)
        latent = latent * np.minimum(1.0, policy.clip_norm / np.maximum(norms, 1e-12))
    sums = np.stack([latent[labels == name].sum(axis=0) for name in released])
    counts = np.array([sizes[name] for name in released], dtype=np.int64)
    sums, sum_spend = dp.release_sums(
        sums, clip_norm=policy.clip_norm, noise_multiplier=policy.noise_multiplier, delta=policy.delta,
        bound=count_policy.contribution_bound,
    )  # fmt: skip
    noisy_counts, count_spend = dp.release_counts(counts, count_policy)
    report["spend"] = {"sums": sum_spend.to_dict(), "counts": count_spend.to_dict()}
    report["total_spend"] = dp.combined(sum_spend, count_spend)
    noisy_counts = np.maximum(noisy_counts.astype(np.float64), 1.0)  # a count below one cell carries no prototype
    return NewTypePrototypes(bundle_id, tuple(released), sums, noisy_counts), report


def combine(contributions: Sequence[NewTypePrototypes]) -> dict[str, tuple[np.ndarray, float, int]]:
    """Per new type: the prototype ``sum of sums / sum of counts``, the total count and the labs holding it."""
    totals: dict[str, list[Any]] = {}
    for contribution in contributions:
        for name, row, count in zip(contribution.names, contribution.sums, contribution.counts, strict=True):
            entry = totals.setdefault(name, [np.zeros_like(row), 0.0, 0])
            entry[0] = entry[0] + row
            entry[1] += float(count)
            entry[2] += 1
    return {name: (s / c, c, labs) for name, (s, c, labs) in sorted(totals.items())}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value) in ("", "nan", "NaN")
