"""Flower records as plain values, read without trusting them: the codec under :mod:`fedarches.shared.protocol`.

Nothing here knows what a message means. :class:`RecordRule` states what one record may hold,
:class:`PlainContent` is a message's records with no Flower types, :func:`decode_array` reads an
array without loading pickles or trusting its header, :func:`peer_json` parses JSON a peer sent,
:func:`check_records` and :func:`check_content` hold a message to its rules, and
:func:`describe_content` says what a message holds (for the egress audit and a preview).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType

from fedarches.shared._json import strict_loads
from fedarches.shared.errors import PrivacyError, ProtocolError

__all__ = [
    "MAX_META_CHARS",
    "PlainContent",
    "RecordRule",
    "check_content",
    "check_records",
    "decode_array",
    "describe_content",
    "one_line",
    "peer_json",
    "shown",
]

MAX_META_CHARS = 1_000_000  # JSON text inside a record (adapter slices, label statistics) is at most this
KINDS = {"array": ArrayRecord, "config": ConfigRecord, "metric": MetricRecord}


@dataclass(frozen=True)
class RecordRule:
    """One record a message may hold: its kind (array, config, metric) and keys (None: any float tensors)."""

    kind: str
    keys: frozenset[str] | None
    allow_bytes: bool = False


@dataclass(frozen=True)
class PlainContent:
    """A message's records with no Flower types: record name → key → value, per record kind."""

    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    arrays: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_content(cls, content: RecordDict) -> PlainContent:
        """Decode a :class:`~flwr.app.RecordDict`; :class:`ProtocolError` names an array that does not decode."""
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for name, record in content.array_records.items():
            arrays[name] = {}
            for key, array in record.items():
                try:
                    arrays[name][key] = decode_array(array)
                except (TypeError, ValueError, EOFError, OSError) as err:
                    msg = f"array {shown(key)} in {shown(name)} cannot be decoded ({shown(str(err), 200)})"
                    raise ProtocolError(msg) from None
        return cls(
            configs={name: dict(record.items()) for name, record in content.config_records.items()},
            arrays=arrays,
            metrics={name: dict(record.items()) for name, record in content.metric_records.items()},
        )


def check_records(content: Any, rules: Mapping[str, RecordRule]) -> None:
    """Raise :class:`ProtocolError` unless ``content`` (a :class:`PlainContent`) holds only what ``rules`` allow.

    Each record must be named in ``rules``, be of its kind, be a mapping, and hold only its keys.
    """
    if not isinstance(content, PlainContent):
        msg = f"malformed reply: not a reply ({type(content).__name__})"
        raise ProtocolError(msg)
    seen: dict[str, str] = {}
    for kind, records in (("config", content.configs), ("array", content.arrays), ("metric", content.metrics)):
        if not isinstance(records, Mapping):
            msg = f"malformed reply: {kind} records are a {type(records).__name__}"
            raise ProtocolError(msg)
        for name, record in records.items():
            if name in seen:
                msg = f"record {shown(name)} is sent both as a {seen[name]} and a {kind} record"
                raise ProtocolError(msg)
            seen[name] = kind
            rule = rules.get(name) if isinstance(name, str) else None
            if rule is None:
                msg = f"record {shown(name)} is not one a lab may send"
                raise ProtocolError(msg)
            if rule.kind != kind:
                msg = f"record {name!r} must be a {rule.kind} record, not a {kind} record"
                raise ProtocolError(msg)
            if not isinstance(record, Mapping):
                msg = f"record {name!r} is a {type(record).__name__}, not a record"
                raise ProtocolError(msg)
            if rule.keys is not None:
                extra = [k for k in record if k not in rule.keys]
                if extra:
                    msg = f"record {name!r} carries keys outside the protocol: {shown(sorted(map(str, extra)))}"
                    raise ProtocolError(msg)


def check_content(content: RecordDict, rules: Mapping[str, RecordRule], *, what: str, max_array_bytes: int) -> None:
    """Raise :class:`PrivacyError` unless a message about to leave holds only what ``rules`` allow.

    Every record must be named in ``rules`` with its kind and keys; arrays must be floating point
    and hold at most ``max_array_bytes`` in all; config values must be scalars or lists of scalars
    (bytes only where the rule allows them, and counted against the limit).
    """
    total = 0
    for name, record in content.items():
        rule = rules.get(name)
        if rule is None:
            msg = f"record {name!r} is not on the egress allow-list for {what} replies"
            raise PrivacyError(msg)
        if not isinstance(record, KINDS[rule.kind]):
            msg = f"record {name!r} must be a {rule.kind} record"
            raise PrivacyError(msg)
        if rule.keys is not None:
            extra = set(record) - rule.keys
            if extra:
                msg = f"record {name!r} carries keys outside the allow-list: {sorted(extra)}"
                raise PrivacyError(msg)
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                values = array.numpy()
                if not np.issubdtype(values.dtype, np.floating):
                    msg = f"array {key!r} in {name!r} is {values.dtype}; only float tensors may leave"
                    raise PrivacyError(msg)
                total += values.nbytes
        elif isinstance(record, ConfigRecord):
            for key, value in record.items():
                holds_bytes = isinstance(value, bytes) or (
                    isinstance(value, list) and any(isinstance(v, bytes) for v in value)
                )
                if holds_bytes and rule.allow_bytes:
                    total += len(value) if isinstance(value, bytes) else sum(len(v) for v in value)  # type: ignore[arg-type]
                elif holds_bytes:
                    msg = f"config value {name}.{key} holds raw bytes; only text and numbers may leave"
                    raise PrivacyError(msg)
    if total > max_array_bytes:
        msg = f"reply holds {total} bytes of arrays, over the egress limit of {max_array_bytes}"
        raise PrivacyError(msg)


def decode_array(array: Array) -> np.ndarray:
    """An :class:`~flwr.app.Array`'s values; raise :class:`ValueError` unless it is a plain ``.npy`` of its size.

    The ``.npy`` header is read first and must describe exactly the bytes that follow, so a header
    claiming a huge shape allocates nothing; object arrays (pickles) are never loaded.
    """
    if array.stype != SType.NUMPY:
        msg = f"array is serialized as {str(array.stype)[:40]!r}, not numpy.ndarray"
        raise ValueError(msg)
    data = bytes(array.data)
    buffer = io.BytesIO(data)
    version = np.lib.format.read_magic(buffer)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
    else:
        msg = f".npy format version {version} is not accepted"
        raise ValueError(msg)
    if dtype.hasobject:
        msg = "array holds Python objects"
        raise ValueError(msg)
    size = math.prod(shape) * dtype.itemsize
    if size != len(data) - buffer.tell():
        msg = f"array header describes {size} bytes, but {len(data) - buffer.tell()} follow"
        raise ValueError(msg)
    return np.load(io.BytesIO(data), allow_pickle=False)


def peer_json(text: Any, what: str) -> Any:
    """Parse JSON text from a peer (:func:`~fedarches.shared._json.strict_loads`, at most :data:`MAX_META_CHARS`)."""
    if not isinstance(text, str):
        msg = f"{what} must be JSON text, got {type(text).__name__}"
        raise ValueError(msg)
    return strict_loads(text, what, max_chars=MAX_META_CHARS)


def describe_content(content: RecordDict) -> dict[str, Any]:
    """A JSON-safe description of a message's content: record kinds, array shapes, bytes and sha256, config values."""
    out: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = {k: a.numpy() for k, a in record.items()}
            out[name] = {
                "kind": "array",
                "arrays": {
                    k: {
                        "shape": list(v.shape),
                        "dtype": str(v.dtype),
                        "bytes": int(v.nbytes),
                        "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest(),
                    }
                    for k, v in arrays.items()
                },
                "bytes": int(sum(v.nbytes for v in arrays.values())),
            }
        elif isinstance(record, MetricRecord):
            out[name] = {"kind": "metric", "values": dict(record)}
        else:
            out[name] = {"kind": "config", "values": {k: _jsonable(v) for k, v in record.items()}}
    return out


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: quoting what a peer sent, never at length."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is named by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(value: object, limit: int = 300) -> str:
    """Text a peer sent (an error, a reason) as one printable line of at most ``limit`` characters."""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a value whose text fails is named by its type
        text = f"<{type(value).__name__}>"
    flat = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
