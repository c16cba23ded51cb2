"""Aggregated label statistics: the only description of a lab's cells that leaves it.

Per predicted cell type: the number of cells, their mean confidence, and how many are
low-confidence. :class:`LabelCounts` holds the exact values and never leaves the lab;
:func:`suppress` turns counts (exact, or already noised by differential privacy) into the
released :class:`LabelStatistics`:

- primary suppression: a count below ``k`` (default 11) is marked suppressed and its value is
  never stored, so it cannot be sent; the mean confidence of a suppressed type goes with it;
- complement: a type's low-confidence count is suppressed when it, or the type's number of
  confident cells (cells minus low-confidence), is below ``k``;
- secondary suppression: the lab's totals are treated as public, so the suppressed counts of a
  column must not add up to a small number (1 to k-1) that totals minus released counts would
  reveal; the smallest released counts are suppressed too until they do not. It protects exact
  counts; counts already noised by differential privacy skip it (``secondary=False``): what
  totals would reveal is then itself a noised value, covered by the DP guarantee, and hiding
  large counts to protect noise would cost accuracy for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_MIN_COUNT = 11
SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class TypeStatistics:
    """Statistics of one predicted cell type; ``None`` means suppressed (or withheld)."""

    cell_type: str
    n_cells: int | None
    mean_confidence: float | None
    n_low_confidence: int | None

    @property
    def suppressed(self) -> tuple[str, ...]:
        """Names of the suppressed fields."""
        return tuple(k for k in ("n_cells", "mean_confidence", "n_low_confidence") if getattr(self, k) is None)


@dataclass(frozen=True)
class LabelStatistics:
    """Per-type statistics of one lab's predictions, with small counts suppressed."""

    min_count: int
    types: tuple[TypeStatistics, ...]
    privacy: dict[str, Any] | None = None  # the DP mechanism and (ε, δ) the counts were released under

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; suppressed values appear as the string ``"suppressed"``."""
        out: dict[str, Any] = {
            "min_count": self.min_count,
            "types": [{k: (SUPPRESSED if v is None else v) for k, v in asdict(t).items()} for t in self.types],
        }
        if self.privacy is not None:
            out["privacy"] = self.privacy
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelStatistics:
        """Inverse of :meth:`to_dict`."""
        types = tuple(
            TypeStatistics(**{k: (None if v == SUPPRESSED else v) for k, v in t.items()}) for t in data["types"]
        )
        return cls(int(data["min_count"]), types, data.get("privacy"))

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Printable rows: type, cells, mean confidence, low-confidence cells."""

        def fmt(value: float | None, spec: str) -> str:
            return SUPPRESSED if value is None else format(value, spec)

        return [
            (t.cell_type, fmt(t.n_cells, "d"), fmt(t.mean_confidence, ".3f"), fmt(t.n_low_confidence, "d"))
            for t in self.types
        ]


@dataclass(frozen=True)
class LabelCounts:
    """Exact per-type counts of one lab's predictions. They stay in the lab; releases derive from them."""

    categories: tuple[str, ...]
    n_cells: np.ndarray
    n_low_confidence: np.ndarray
    confidence_sum: np.ndarray | None

    @classmethod
    def from_cells(
        cls, predicted: Sequence[str], confidence: np.ndarray, low_confidence: np.ndarray, categories: Iterable[str]
    ) -> LabelCounts:
        """Count per type in ``categories`` (empty types listed too; unlisted predicted types appended)."""
        predicted_arr = np.asarray(predicted, dtype=object)
        confidence = np.asarray(confidence, dtype=float)
        low_confidence = np.asarray(low_confidence, dtype=bool)
        ordered = tuple(dict.fromkeys([*categories, *sorted(set(predicted_arr.tolist()))]))
        masks = [predicted_arr == t for t in ordered]
        return cls(
            categories=tuple(str(t) for t in ordered),
            n_cells=np.array([m.sum() for m in masks], dtype=np.int64),
            n_low_confidence=np.array([low_confidence[m].sum() for m in masks], dtype=np.int64),
            confidence_sum=np.array([confidence[m].sum() for m in masks], dtype=float),
        )

    def as_vector(self) -> np.ndarray:
        """Cells per type, then low-confidence cells per type: the vector a secure sum adds up."""
        return np.concatenate([self.n_cells, self.n_low_confidence]).astype(np.int64)

    @classmethod
    def from_vector(cls, categories: Sequence[str], vector: np.ndarray) -> LabelCounts:
        """Inverse of :meth:`as_vector` (no confidence sums)."""
        n = len(categories)
        vector = np.asarray(vector)
        if vector.shape != (2 * n,):
            msg = f"a count vector for {n} types has {2 * n} values, got shape {vector.shape}"
            raise ValueError(msg)
        return cls(tuple(categories), vector[:n].astype(np.int64), vector[n:].astype(np.int64), None)


def suppress(
    counts: LabelCounts,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    privacy: dict[str, Any] | None = None,
    secondary: bool = True,
) -> LabelStatistics:
    """Primary, complement and secondary suppression of ``counts`` (see the module docstring).

    Negative values (from noise) are released as 0 before suppression. Mean confidence is
    released only where ``counts.confidence_sum`` is given and the type's count is released.
    """
    if min_count < 1:
        msg = f"min_count must be at least 1, got {min_count}"
        raise ValueError(msg)
    cells = np.maximum(np.asarray(counts.n_cells, dtype=np.int64), 0)
    low = np.minimum(np.maximum(np.asarray(counts.n_low_confidence, dtype=np.int64), 0), cells)
    cells_hidden = cells < min_count
    confident = cells - low
    low_hidden = cells_hidden | (low < min_count) | ((confident > 0) & (confident < min_count))
    if secondary:
        cells_hidden = _secondary(cells, cells_hidden, min_count)
        low_hidden = _secondary(low, low_hidden | cells_hidden, min_count)
    types = []
    for i, cell_type in enumerate(counts.categories):
        mean = None
        if counts.confidence_sum is not None and not cells_hidden[i]:
            mean = round(float(counts.confidence_sum[i]) / int(cells[i]), 4)
        types.append(
            TypeStatistics(
                cell_type=cell_type,
                n_cells=None if cells_hidden[i] else int(cells[i]),
                mean_confidence=mean,
                n_low_confidence=None if low_hidden[i] else int(low[i]),
            )
        )
    return LabelStatistics(min_count, tuple(types), privacy)


def _secondary(values: np.ndarray, hidden: np.ndarray, min_count: int) -> np.ndarray:
    """Hide the smallest released values until the hidden ones add up to 0 or at least ``min_count``."""
    hidden = hidden.copy()
    while 0 < values[hidden].sum() < min_count and not hidden.all():
        released = np.flatnonzero(~hidden)
        hidden[released[np.argmin(values[released])]] = True
    return hidden


def compute_label_statistics(
    predicted: Sequence[str],
    confidence: np.ndarray,
    low_confidence: np.ndarray,
    categories: Iterable[str],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
) -> LabelStatistics:
    """Count predictions per type in ``categories`` (empty types listed too) and suppress them."""
    return suppress(LabelCounts.from_cells(predicted, confidence, low_confidence, categories), min_count=min_count)
