"""Aggregated label statistics: the only description of a lab's cells that leaves it.

Per predicted cell type: the number of cells, their mean confidence, and how many are
low-confidence. A count below ``k`` (default 11) is suppressed: it is marked as suppressed and
its value is never stored, so it cannot be sent. The mean confidence of a suppressed cell count
is suppressed with it (a mean over a handful of cells describes those cells).
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
    """Statistics of one predicted cell type; ``None`` means suppressed."""

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; suppressed values appear as the string ``"suppressed"``."""
        return {
            "min_count": self.min_count,
            "types": [{k: (SUPPRESSED if v is None else v) for k, v in asdict(t).items()} for t in self.types],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelStatistics:
        """Inverse of :meth:`to_dict`."""
        types = tuple(
            TypeStatistics(**{k: (None if v == SUPPRESSED else v) for k, v in t.items()}) for t in data["types"]
        )
        return cls(int(data["min_count"]), types)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Printable rows: type, cells, mean confidence, low-confidence cells."""

        def fmt(value: float | None, spec: str) -> str:
            return SUPPRESSED if value is None else format(value, spec)

        return [
            (t.cell_type, fmt(t.n_cells, "d"), fmt(t.mean_confidence, ".3f"), fmt(t.n_low_confidence, "d"))
            for t in self.types
        ]


def compute_label_statistics(
    predicted: Sequence[str],
    confidence: np.ndarray,
    low_confidence: np.ndarray,
    categories: Iterable[str],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
) -> LabelStatistics:
    """Count predictions per type in ``categories`` (empty types listed too); suppress counts below ``min_count``."""
    if min_count < 1:
        msg = f"min_count must be at least 1, got {min_count}"
        raise ValueError(msg)
    predicted_arr = np.asarray(predicted, dtype=object)
    confidence = np.asarray(confidence, dtype=float)
    low_confidence = np.asarray(low_confidence, dtype=bool)
    ordered = list(dict.fromkeys([*categories, *sorted(set(predicted_arr.tolist()))]))
    types = []
    for cell_type in ordered:
        mask = predicted_arr == cell_type
        n_cells = int(mask.sum())
        n_low = int(low_confidence[mask].sum())
        released = n_cells >= min_count
        types.append(
            TypeStatistics(
                cell_type=str(cell_type),
                n_cells=n_cells if released else None,
                mean_confidence=round(float(confidence[mask].mean()), 4) if released else None,
                n_low_confidence=n_low if n_low >= min_count else None,
            )
        )
    return LabelStatistics(min_count, tuple(types))
