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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.errors import AdapterError

ADAPTER_FORMAT = "fedarches.adapter"
_META = "__meta__"


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
        """Inverse of :meth:`to_arrays`; checks that arrays and metadata agree."""
        if meta.get("format") != ADAPTER_FORMAT:
            msg = f"not a fedarches adapter (format {meta.get('format')!r})"
            raise AdapterError(msg)
        slices = meta["slices"]
        if set(slices) != set(arrays):
            msg = "adapter metadata and arrays name different tensors"
            raise AdapterError(msg)
        tensors = {
            name: TensorSlice(np.asarray(arrays[name]), int(s["axis"]), int(s["offset"])) for name, s in slices.items()
        }
        return cls(str(meta["bundle_id"]), tuple(meta["batch_categories"]), tensors)

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
        meta = json.loads(arrays.pop(_META).tobytes())
        return cls.from_arrays(arrays, meta)

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz``."""
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> Adapter:
        """Read an adapter written by :meth:`save`."""
        return cls.from_bytes(Path(path).read_bytes())

    def check_against(self, reference_shapes: Mapping[str, tuple[int, ...]], *, max_bytes: int | None = None) -> None:
        """Raise :class:`AdapterError` unless this adapter fits the reference's tensors.

        Each slice must name a reference tensor, sit right after it along its axis, match it on
        every other axis, have one entry per new batch along that axis, and hold finite floats.
        """
        if max_bytes is not None and self.nbytes > max_bytes:
            msg = f"adapter holds {self.nbytes} bytes, over the limit of {max_bytes}"
            raise AdapterError(msg)
        n_new = len(self.batch_categories)
        if n_new == 0:
            msg = "adapter names no new batch"
            raise AdapterError(msg)
        for name, t in self.tensors.items():
            if name not in reference_shapes:
                msg = f"adapter tensor {name!r} is not a tensor of the reference model"
                raise AdapterError(msg)
            ref_shape = tuple(reference_shapes[name])
            expected = list(ref_shape)
            if not 0 <= t.axis < len(ref_shape) or t.offset != ref_shape[t.axis]:
                msg = f"adapter tensor {name!r}: axis/offset {t.axis}/{t.offset} do not fit reference shape {ref_shape}"
                raise AdapterError(msg)
            expected[t.axis] = n_new
            if tuple(t.values.shape) != tuple(expected):
                msg = f"adapter tensor {name!r} has shape {t.values.shape}, expected {tuple(expected)}"
                raise AdapterError(msg)
            if not np.issubdtype(t.values.dtype, np.floating) or not np.isfinite(t.values).all():
                msg = f"adapter tensor {name!r} holds non-finite or non-float values"
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
