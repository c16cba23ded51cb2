"""What travels between coordinator and labs, as Flower records, and what a lab may send.

Coordinator → lab
    ``train.map`` message (:data:`MAP`): ``ConfigRecord`` :data:`ROUND` (bundle id, training options) and, only
    when the coordinator has no record of the lab holding that bundle, ``ArrayRecord``
    :data:`BUNDLE` (each bundle file as uint8). A bundle travels once, not every round; a lab
    that lost its copy answers with error code ``LAB_ERROR_CODE_BASE + 20`` and gets it again.

    ``train`` messages (:data:`SECURE_SUM`): Flower's SecAgg+ protocol, four stages, adding up the
    labs' label-count vectors (see :mod:`fedarches.server.secure_sum`).

Lab → coordinator (the egress allow-list, :data:`ALLOWED_REPLIES`)
    ``train.map`` reply: ``ArrayRecord`` :data:`ADAPTER` (float tensors of the new batch columns)
    and ``ConfigRecord`` :data:`ADAPTER_META` (where each slice sits), unless the lab's policy
    keeps adapters in; ``ConfigRecord`` :data:`LABEL_STATS` (suppressed, optionally noised label
    statistics, JSON) only when the lab's policy releases per-lab composition; ``ConfigRecord``
    :data:`LAB` (name, version, epochs trained, how it releases composition) and ``MetricRecord``
    :data:`TIMINGS` (seconds).
    ``train`` replies: SecAgg+ keys, encrypted shares and the masked count vector (bytes, in
    the ``secaggplus_configs`` record), plus Flower's empty legacy fit-result records.

:func:`check_egress` enforces the allow-list on every message a lab sends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedarches.shared.adapters import Adapter
from fedarches.shared.errors import AdapterError, PrivacyError
from fedarches.shared.labels import LabelStatistics

MAP = "train.map"
SECURE_SUM = "train"  # Flower's SecAgg+ workflow sends plain ``train`` messages
# Lab errors travel as Flower error codes LAB_ERROR_CODE_BASE + the fedarches exit code, with no text.
LAB_ERROR_CODE_BASE = 1000

ROUND = "fedarches.round"
BUNDLE = "fedarches.bundle"
ADAPTER = "fedarches.adapter"
ADAPTER_META = "fedarches.adapter-meta"
LABEL_STATS = "fedarches.label-stats"
LAB = "fedarches.lab"
TIMINGS = "fedarches.timings"

ROUND_KEYS = ("round-id", "bundle-id", "max-epochs", "seed", "confidence-threshold", "min-count", "max-adapter-bytes")


@dataclass(frozen=True)
class RecordRule:
    """One record a lab may send: its kind and the keys it may hold (None: any float tensors)."""

    kind: str
    keys: frozenset[str] | None
    allow_bytes: bool = False


SECAGG_RECORD = RECORD_KEY_CONFIGS  # "secaggplus_configs"
_SECAGG_REPLY_KEYS = frozenset({"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"})

ALLOWED_REPLIES: dict[str, dict[str, RecordRule]] = {
    MAP: {
        ADAPTER: RecordRule("array", None),
        ADAPTER_META: RecordRule("config", frozenset({"format", "bundle-id", "batch-categories", "slices"})),
        LABEL_STATS: RecordRule("config", frozenset({"json"})),
        LAB: RecordRule("config", frozenset({"lab-name", "fedarches-version", "n-epochs", "composition"})),
        TIMINGS: RecordRule(
            "metric",
            frozenset({"validate_s", "surgery_setup_s", "train_s", "predict_s", "total_s", "receive_bundle_s"}),
        ),
    },
    SECURE_SUM: {
        SECAGG_RECORD: RecordRule("config", _SECAGG_REPLY_KEYS, allow_bytes=True),
        "fitres.parameters": RecordRule("array", frozenset()),
        "fitres.metrics": RecordRule("config", frozenset()),
        "fitres.num_examples": RecordRule("metric", frozenset({"num_examples"})),
        "fitres.status": RecordRule("config", frozenset({"code", "message"})),
    },
}
_KINDS = {"array": ArrayRecord, "config": ConfigRecord, "metric": MetricRecord}


def bundle_to_record(bundle_dir: Path, files: list[str]) -> ArrayRecord:
    """A bundle directory's files (manifest and signature included) as uint8 arrays."""
    return ArrayRecord(
        array_dict={
            name: Array(np.frombuffer((Path(bundle_dir) / name).read_bytes(), dtype=np.uint8)) for name in files
        }
    )


def record_to_files(record: ArrayRecord) -> dict[str, bytes]:
    """Inverse of :func:`bundle_to_record`: file name → bytes (not yet verified)."""
    files = {}
    for name, array in record.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            msg = f"bundle file name {name!r} escapes the bundle directory"
            raise AdapterError(msg, hint="the coordinator sent a malformed bundle; tell the atlas maintainers")
        files[name] = array.numpy().tobytes()
    return files


def adapter_to_records(adapter: Adapter) -> dict[str, ArrayRecord | ConfigRecord]:
    """The adapter as an ArrayRecord of tensors plus a ConfigRecord saying where each slice sits."""
    arrays, meta = adapter.to_arrays()
    return {
        ADAPTER: ArrayRecord(array_dict={name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()}),
        ADAPTER_META: ConfigRecord(
            {
                "format": meta["format"],
                "bundle-id": meta["bundle_id"],
                "batch-categories": list(meta["batch_categories"]),
                "slices": json.dumps(meta["slices"], sort_keys=True),
            }
        ),
    }


def adapter_from_records(content: RecordDict) -> Adapter:
    """Rebuild an :class:`Adapter` from a lab's reply; raise :class:`AdapterError` when malformed."""
    if ADAPTER not in content.array_records or ADAPTER_META not in content.config_records:
        msg = "reply carries no adapter"
        raise AdapterError(msg)
    meta = content.config_records[ADAPTER_META]
    try:
        arrays = {name: array.numpy() for name, array in content.array_records[ADAPTER].items()}
        slices = json.loads(str(meta["slices"]))
        return Adapter.from_arrays(
            arrays,
            {
                "format": meta["format"],
                "bundle_id": meta["bundle-id"],
                "batch_categories": list(meta["batch-categories"]),  # type: ignore[arg-type]
                "slices": slices,
            },
        )
    except (KeyError, TypeError, ValueError) as err:
        msg = f"adapter metadata is malformed ({err})"
        raise AdapterError(msg) from err


def label_stats_to_record(stats: LabelStatistics) -> ConfigRecord:
    """Label statistics as a one-field ConfigRecord (JSON; suppressed values are the string ``suppressed``)."""
    return ConfigRecord({"json": json.dumps(stats.to_dict(), sort_keys=True)})


def label_stats_from_record(record: ConfigRecord, *, min_count: int) -> LabelStatistics:
    """Parse and check label statistics: every released count must be at least ``min_count``."""
    try:
        stats = LabelStatistics.from_dict(json.loads(str(record["json"])))
    except (KeyError, TypeError, ValueError) as err:
        msg = f"label statistics are malformed ({err})"
        raise AdapterError(msg, hint="the lab runs an incompatible fedarches version") from err
    if stats.min_count < min_count:
        msg = f"label statistics were suppressed below k={stats.min_count}, the round requires k>={min_count}"
        raise PrivacyError(msg, hint="the lab must map again with --min-count at least the round's")
    for t in stats.types:
        for value in (t.n_cells, t.n_low_confidence):
            if value is not None and (not isinstance(value, int) or value < min_count):
                msg = f"label statistics release a count of {value} for {t.cell_type!r}, below k={min_count}"
                raise PrivacyError(msg)
    return stats


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


def check_egress(message_type: str, content: RecordDict, *, max_array_bytes: int) -> None:
    """Raise :class:`PrivacyError` unless ``content`` holds only what the allow-list permits.

    Every record must be allow-listed for ``message_type`` with its kind and keys; arrays must be
    floating point and hold at most ``max_array_bytes`` in all; config values must be scalars or
    lists of scalars (no bytes).
    """
    rules = ALLOWED_REPLIES.get(message_type)
    if rules is None:
        msg = f"a lab never answers {message_type!r} messages"
        raise PrivacyError(msg)
    total = 0
    for name, record in content.items():
        rule = rules.get(name)
        if rule is None:
            msg = f"record {name!r} is not on the egress allow-list for {message_type!r} replies"
            raise PrivacyError(msg)
        if not isinstance(record, _KINDS[rule.kind]):
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


def round_config(values: Mapping[str, Any]) -> ConfigRecord:
    """The coordinator's round settings as a ConfigRecord (keys in :data:`ROUND_KEYS`)."""
    missing = [k for k in ROUND_KEYS if k not in values]
    if missing:
        msg = f"round configuration lacks {missing}"
        raise ValueError(msg)
    return ConfigRecord({k: values[k] for k in ROUND_KEYS})


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
