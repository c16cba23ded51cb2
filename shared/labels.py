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
    def from_dict(cls, data: Any) -> LabelStatistics:
        """Inverse of :meth:`to_dict`; raise :class:`ValueError` naming the first field that is malformed.

        Strict: exactly the fields :meth:`to_dict` writes; counts are non-negative integers (a
        boolean is not a count), mean confidences finite numbers in [0, 1], either may be the string
        ``"suppressed"``; a type's low-confidence count is at most its count of cells.
        """
        if not isinstance(data, dict):
            msg = f"label statistics must be a JSON object, got {type(data).__name__}"
            raise ValueError(msg)
        _expect_keys(data, required={"min_count", "types"}, optional={"privacy"}, what="label statistics")
        min_count, types, privacy = data["min_count"], data["types"], data.get("privacy")
        if type(min_count) is not int or min_count < 1:
            msg = f"label statistics' min_count must be a positive integer, got {_brief(min_count)}"
            raise ValueError(msg)
        if not isinstance(types, list):
            msg = f"label statistics' types must be a list, got {type(types).__name__}"
            raise ValueError(msg)
        if privacy is not None and not isinstance(privacy, dict):
            msg = f"label statistics' privacy must be an object, got {type(privacy).__name__}"
            raise ValueError(msg)
        return cls(min_count, tuple(_type_from_dict(t, i) for i, t in enumerate(types)), privacy)

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


def _type_from_dict(data: Any, index: int) -> TypeStatistics:
    """One entry of :meth:`LabelStatistics.from_dict`'s ``types``."""
    what = f"label statistics' types[{index}]"
    if not isinstance(data, dict):
        msg = f"{what} must be an object, got {type(data).__name__}"
        raise ValueError(msg)
    _expect_keys(data, required={"cell_type", "n_cells", "mean_confidence", "n_low_confidence"}, what=what)
    cell_type = data["cell_type"]
    if not isinstance(cell_type, str):
        msg = f"{what}.cell_type must be a string, got {type(cell_type).__name__}"
        raise ValueError(msg)
    counts = {}
    for key in ("n_cells", "n_low_confidence"):
        value = data[key]
        if value != SUPPRESSED and (type(value) is not int or value < 0):
            msg = f"{what}.{key} must be a non-negative integer or {SUPPRESSED!r}, got {_brief(value)}"
            raise ValueError(msg)
        counts[key] = None if value == SUPPRESSED else value
    mean = data["mean_confidence"]
    if mean != SUPPRESSED and (type(mean) not in (int, float) or not 0.0 <= mean <= 1.0):  # NaN fails too
        msg = f"{what}.mean_confidence must be a number in [0, 1] or {SUPPRESSED!r}, got {_brief(mean)}"
        raise ValueError(msg)
    cells, low = counts["n_cells"], counts["n_low_confidence"]
    if cells is not None and low is not None and low > cells:
        msg = f"{what} has {low} low-confidence cells out of {cells}"
        raise ValueError(msg)
    return TypeStatistics(cell_type, cells, None if mean == SUPPRESSED else float(mean), low)


def _expect_keys(data: dict[Any, Any], *, required: set[str], optional: set[str] | None = None, what: str) -> None:
    missing = sorted(required - set(data))
    extra = sorted(map(str, set(data) - required - (optional or set())))
    if missing or extra:
        msg = f"{what} " + "; ".join(
            part for part in (missing and f"lack {missing}", extra and f"hold unexpected {_brief(extra)}") if part
        )
        raise ValueError(msg)


def _brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages quoting what a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
