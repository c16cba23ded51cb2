"""scArches adapters: the query-specific parameters that surgery adds and trains.

Surgery grows some reference tensors along one axis (the new batch columns of the first
layers). An :class:`Adapter` holds exactly those new slices as plain float arrays, with the
axis and offset where each belongs, so that ``reference + adapter`` rebuilds the query model.
Everything else in the query model must equal the reference bit for bit
(:func:`check_reference_unchanged`). No torch here: state dicts come in as numpy arrays.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import AdapterError

ADAPTER_FORMAT = "fedarches.adapter"
_META = "__meta__"
# The largest magnitude an adapter value may have. Surgery's new batch columns are first-layer weights
# of order 1, and DP noise (sd noise_multiplier * clip_norm) stays far below it; a value past it can only
# be forged, and the bound keeps every merged weight far inside float16/float32 range.
MAX_ABS_VALUE = 1e6
# Float types an adapter may hold (what torch stores a weight as); no complex, no long double.
FLOAT_DTYPES = frozenset({np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)})


@dataclass(frozen=True)
class TensorSlice:
    """One grown tensor's new part: ``values`` sit at ``offset`` along ``axis``."""

    values: np.ndarray
    axis: int
    offset: int


@dataclass(frozen=True)
class Adapter:
    """New, query-specific parameters of one lab against one reference bundle."""

    bundle_id: str
    batch_categories: tuple[str, ...]
    tensors: Mapping[str, TensorSlice]

    @property
    def nbytes(self) -> int:
        """Bytes of parameter values."""
        return sum(t.values.nbytes for t in self.tensors.values())

    @property
    def n_values(self) -> int:
        """Number of parameter values."""
        return sum(t.values.size for t in self.tensors.values())

    def describe(self) -> list[dict[str, Any]]:
        """One row per tensor: name, shape, dtype, bytes."""
        return [
            {"name": name, "shape": list(t.values.shape), "dtype": str(t.values.dtype), "bytes": t.values.nbytes}
            for name, t in self.tensors.items()
        ]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Plain arrays plus JSON-safe metadata (the form that travels in a Flower ArrayRecord)."""
        meta = {
            "format": ADAPTER_FORMAT,
            "bundle_id": self.bundle_id,
            "batch_categories": list(self.batch_categories),
            "slices": {name: {"axis": t.axis, "offset": t.offset} for name, t in self.tensors.items()},
        }
        return {name: t.values for name, t in self.tensors.items()}, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Adapter:
        """Inverse of :meth:`to_arrays`; raise :class:`AdapterError` unless arrays and metadata are well formed.

        Checks the form only (types, names, axis and offset as non-negative integers); whether the
        adapter fits a reference is :meth:`check_against`'s job.
        """
        if not isinstance(meta, Mapping) or not isinstance(arrays, Mapping):
            msg = "adapter metadata and tensors must be mappings"
            raise AdapterError(msg)
        if meta.get("format") != ADAPTER_FORMAT:
            msg = f"not a fedarches adapter (format {_short(meta.get('format'))})"
            raise AdapterError(msg)
        missing = [k for k in ("bundle_id", "batch_categories", "slices") if k not in meta]
        if missing:
            msg = f"adapter metadata lacks {missing}"
            raise AdapterError(msg)
        bundle_id, batches, slices = meta["bundle_id"], meta["batch_categories"], meta["slices"]
        if not isinstance(bundle_id, str):
            msg = f"adapter bundle id must be a string, got {type(bundle_id).__name__}"
            raise AdapterError(msg)
        if not isinstance(batches, list | tuple) or not all(isinstance(b, str) for b in batches):
            msg = "adapter batch categories must be a list of strings"
            raise AdapterError(msg)
        if not isinstance(slices, Mapping):
            msg = f"adapter slices must be a mapping of tensor name to axis and offset, got {type(slices).__name__}"
            raise AdapterError(msg)
        if set(slices) != set(arrays):
            msg = "adapter metadata and arrays name different tensors"
            raise AdapterError(msg)
        tensors = {}
        for name, where in slices.items():
            if not isinstance(name, str):
                msg = f"adapter tensor names must be strings, got {type(name).__name__}"
                raise AdapterError(msg)
            if not isinstance(where, Mapping) or set(where) != {"axis", "offset"}:
                msg = f"adapter tensor {name!r}: its slice must hold exactly 'axis' and 'offset'"
                raise AdapterError(msg)
            axis, offset = where["axis"], where["offset"]
            if not all(type(v) is int and v >= 0 for v in (axis, offset)):
                msg = f"adapter tensor {name!r}: axis and offset must be non-negative integers, got {axis!r}/{offset!r}"
                raise AdapterError(msg)
            values = arrays[name]
            if not isinstance(values, np.ndarray):
                msg = f"adapter tensor {name!r} is a {type(values).__name__}, not an array"
                raise AdapterError(msg)
            tensors[name] = TensorSlice(values, axis, offset)
        return cls(bundle_id, tuple(batches), tensors)

    def to_bytes(self) -> bytes:
        """Serialize to ``.npz`` bytes (readable with ``allow_pickle=False``)."""
        arrays, meta = self.to_arrays()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Adapter:
        """Inverse of :meth:`to_bytes`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (ValueError, OSError) as err:
            msg = "cannot read adapter: not an .npz written by fedarches"
            raise AdapterError(msg) from err
        if _META not in arrays:
            msg = "adapter file has no metadata"
            raise AdapterError(msg)
        try:
            meta = json.loads(arrays.pop(_META).tobytes())
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            msg = "adapter file's metadata is not JSON"
            raise AdapterError(msg) from err
        return cls.from_arrays(arrays, meta)

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz``."""
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> Adapter:
        """Read an adapter written by :meth:`save`."""
        return cls.from_bytes(Path(path).read_bytes())

    def check_against(
        self,
        reference_shapes: Mapping[str, tuple[int, ...]],
        *,
        max_bytes: int | None = None,
        grown: Mapping[str, int] | None = None,
    ) -> None:
        """Raise :class:`AdapterError` unless this adapter fits the reference's tensors.

        Each slice must name a reference tensor, sit right after it along its axis, match it on
        every other axis, have one entry per new batch along that axis, and hold finite floats of
        magnitude at most :data:`MAX_ABS_VALUE`. Batch names must be distinct, non-empty strings.

        Parameters
        ----------
        reference_shapes
            Shape of every tensor of the reference model.
        max_bytes
            Most bytes of parameter values the adapter may hold.
        grown
            The tensors that surgery grows, each with the axis it grows along (see
            :func:`grown_axes`). When given, the adapter must carry exactly these tensors, each
            along its axis: no tensor missing, and none that surgery leaves unchanged.
        """
        if max_bytes is not None and self.nbytes > max_bytes:
            msg = f"adapter holds {self.nbytes} bytes, over the limit of {max_bytes}"
            raise AdapterError(msg)
        n_new = len(self.batch_categories)
        if n_new == 0:
            msg = "adapter names no new batch"
            raise AdapterError(msg)
        if not all(isinstance(b, str) and b for b in self.batch_categories):
            msg = "adapter batch names must be non-empty strings"
            raise AdapterError(msg)
        if len(set(self.batch_categories)) != n_new:
            repeated = sorted(b for b, n in Counter(self.batch_categories).items() if n > 1)
            msg = f"adapter names batches {_short(repeated)} more than once"
            raise AdapterError(msg)
        if grown is not None:
            missing = sorted(set(grown) - set(self.tensors))
            if missing:
                msg = f"adapter lacks {len(missing)} tensors that surgery grows: {_short(missing)}"
                raise AdapterError(msg)
        for name, t in self.tensors.items():
            if name not in reference_shapes:
                msg = f"adapter tensor {_short(name)} is not a tensor of the reference model"
                raise AdapterError(msg)
            if grown is not None and name not in grown:
                msg = f"adapter tensor {name!r} is one that surgery never grows; an adapter may not change it"
                raise AdapterError(msg)
            ref_shape = tuple(reference_shapes[name])
            expected = list(ref_shape)
            if not 0 <= t.axis < len(ref_shape) or t.offset != ref_shape[t.axis]:
                msg = f"adapter tensor {name!r}: axis/offset {t.axis}/{t.offset} do not fit reference shape {ref_shape}"
                raise AdapterError(msg)
            if grown is not None and t.axis != grown[name]:
                msg = f"adapter tensor {name!r} grows along axis {t.axis}; surgery grows it along axis {grown[name]}"
                raise AdapterError(msg)
            expected[t.axis] = n_new
            if tuple(t.values.shape) != tuple(expected):
                msg = f"adapter tensor {name!r} has shape {t.values.shape}, expected {tuple(expected)}"
                raise AdapterError(msg)
            if t.values.dtype not in FLOAT_DTYPES or not np.isfinite(t.values).all():
                msg = f"adapter tensor {name!r} holds non-finite or non-float values ({t.values.dtype})"
                raise AdapterError(msg)
            if t.values.size and float(np.abs(t.values).max()) > MAX_ABS_VALUE:
                msg = f"adapter tensor {name!r} holds values of magnitude over {MAX_ABS_VALUE:g}"
                raise AdapterError(msg)


def extract_adapter(
    reference_state: Mapping[str, np.ndarray],
    query_state: Mapping[str, np.ndarray],
    *,
    bundle_id: str,
    batch_categories: Sequence[str],
) -> Adapter:
    """Take the slices that surgery added to ``reference_state`` out of ``query_state``."""
    tensors: dict[str, TensorSlice] = {}
    for name, query in query_state.items():
        if name not in reference_state:
            msg = f"query model has a tensor {name!r} the reference lacks"
            raise AdapterError(msg)
        ref = reference_state[name]
        if query.shape == ref.shape:
            continue
        axis = _grown_axis(name, ref.shape, query.shape)
        index = [slice(None)] * query.ndim
        index[axis] = slice(ref.shape[axis], None)
        tensors[name] = TensorSlice(np.ascontiguousarray(query[tuple(index)]), axis, ref.shape[axis])
    return Adapter(bundle_id, tuple(batch_categories), tensors)


def check_reference_unchanged(
    reference_state: Mapping[str, np.ndarray], query_state: Mapping[str, np.ndarray]
) -> list[str]:
    """Names of reference tensors (or their reference part) that differ bit-wise in the query model."""
    changed = []
    for name, ref in reference_state.items():
        query = query_state[name]
        if query.shape != ref.shape:
            axis = _grown_axis(name, ref.shape, query.shape)
            index = [slice(None)] * query.ndim
            index[axis] = slice(0, ref.shape[axis])
            query = query[tuple(index)]
        if query.dtype != ref.dtype or query.tobytes() != ref.tobytes():
            changed.append(name)
    return changed


def grown_axes(
    reference_shapes: Mapping[str, tuple[int, ...]], query_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    """The tensors whose shape differs between a reference and its query model, each with the axis it grew along.

    Raise :class:`AdapterError` when the two models do not hold the same tensors, or a tensor
    changed shape in a way surgery never does (several axes, another rank, or shrinking).
    """
    if set(reference_shapes) != set(query_shapes):
        differ = sorted(set(reference_shapes) ^ set(query_shapes))
        msg = f"query and reference models hold different tensors: {_short(differ)}"
        raise AdapterError(msg)
    return {
        name: _grown_axis(name, tuple(ref), tuple(query_shapes[name]))
        for name, ref in reference_shapes.items()
        if tuple(ref) != tuple(query_shapes[name])
    }


def apply_adapters(reference_state: Mapping[str, np.ndarray], adapters: Sequence[Adapter]) -> dict[str, np.ndarray]:
    """``reference + adapters``: a state dict whose grown tensors carry every adapter's slices in order."""
    state = {name: np.asarray(value) for name, value in reference_state.items()}
    for adapter in adapters:
        for name, t in adapter.tensors.items():
            current = state[name]
            if t.offset > current.shape[t.axis]:
                msg = f"adapter tensor {name!r} expects offset {t.offset} but the model has {current.shape[t.axis]}"
                raise AdapterError(msg)
            state[name] = np.concatenate([current, t.values.astype(current.dtype, copy=False)], axis=t.axis)
    return state


def _grown_axis(name: str, ref_shape: tuple[int, ...], query_shape: tuple[int, ...]) -> int:
    diffs = [i for i, (r, q) in enumerate(zip(ref_shape, query_shape, strict=False)) if r != q]
    if len(ref_shape) != len(query_shape) or len(diffs) != 1 or query_shape[diffs[0]] < ref_shape[diffs[0]]:
        msg = f"tensor {name!r} changed shape from {ref_shape} to {query_shape}, which surgery never does"
        raise AdapterError(msg)
    return diffs[0]


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: for messages quoting what a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
