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
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedarches.shared._constants import MAX_BUNDLE_BYTES, MAX_BUNDLE_ENTRIES, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from fedarches.shared._json import strict_loads
from fedarches.shared.adapters import Adapter
from fedarches.shared.bundle_files import check_file_names
from fedarches.shared.errors import (
    AdapterError,
    BundleIntegrityError,
    BundleSizeError,
    PrivacyError,
    ProtocolError,
)
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
        LAB: RecordRule(
            "config",
            frozenset({"lab-name", "fedarches-version", "n-epochs", "composition", "ledger-seq", "ledger-head"}),
        ),
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


def bundle_to_record(files: Mapping[str, bytes]) -> ArrayRecord:
    """A bundle's files (manifest and signature included, see ``ReferenceBundle.verified_files``) as uint8 arrays."""
    return ArrayRecord(array_dict={name: Array(np.frombuffer(data, dtype=np.uint8)) for name, data in files.items()})


def record_to_files(record: ArrayRecord, *, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, bytes]:
    """Inverse of :func:`bundle_to_record`: file name → bytes (not yet verified; see ``LabDir.store_bundle``).

    The names must follow the bundle's rules (:func:`~fedarches.shared.bundle.check_file_names`;
    ``manifest.json`` and ``manifest.sig`` travel too), each file must be a 1-D ``uint8`` array, and
    all of them at most ``max_bytes`` plus the manifest and signature. Raises only
    :class:`~fedarches.shared.errors.FedarchesError`: :class:`BundlePathError`,
    :class:`BundleSizeError` or :class:`BundleIntegrityError`.
    """
    names = check_file_names(record.keys(), allow_manifest=True)
    if len(names) > MAX_BUNDLE_ENTRIES:
        msg = f"the bundle sent holds {len(names)} files; a bundle holds a handful"
        raise BundleSizeError(msg, hint=_BAD_BUNDLE_HINT)
    limit = max_bytes + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES
    total = sum(len(record[name].data) for name in names)
    if total > limit:
        msg = f"the bundle sent holds {total} bytes, over the limit of {limit}"
        raise BundleSizeError(msg, hint=_BAD_BUNDLE_HINT)
    files = {}
    for name in names:
        try:
            values = decode_array(record[name])
        except (TypeError, ValueError, EOFError, OSError) as err:
            msg = f"bundle file {name} cannot be decoded ({str(err)[:200]})"
            raise BundleIntegrityError(msg, hint=_BAD_BUNDLE_HINT) from None
        if values.dtype != np.uint8 or values.ndim != 1:
            msg = f"bundle file {name} arrived as a {values.dtype} array of shape {values.shape}, not bytes"
            raise BundleIntegrityError(msg, hint=_BAD_BUNDLE_HINT)
        files[name] = values.tobytes()
    return files


_BAD_BUNDLE_HINT = "the coordinator sent a malformed bundle and nothing was stored; tell the atlas maintainers"


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


MAX_META_CHARS = 1_000_000  # the adapter's slices and the label statistics travel as JSON text of at most this


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


def adapter_from_fields(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Adapter:
    """Rebuild an :class:`Adapter` from its tensors and the plain values of its :data:`ADAPTER_META` record.

    Raise :class:`AdapterError` when the metadata is malformed (missing or extra fields, slices
    that are not strict JSON, batch categories that are not a list of strings).
    """
    if not isinstance(meta, Mapping):
        msg = f"adapter metadata must be a record, got {type(meta).__name__}"
        raise AdapterError(msg)
    fields = {"format", "bundle-id", "batch-categories", "slices"}
    if set(meta) != fields:
        msg = f"adapter metadata must hold exactly {sorted(fields)}, got {sorted(map(str, meta))[:10]}"
        raise AdapterError(msg)
    try:
        slices = _strict_json(meta["slices"], "adapter slices")
    except ValueError as err:
        msg = f"adapter metadata is malformed ({err})"
        raise AdapterError(msg) from err
    return Adapter.from_arrays(
        arrays,
        {
            "format": meta["format"],
            "bundle_id": meta["bundle-id"],
            "batch_categories": meta["batch-categories"],
            "slices": slices,
        },
    )


def adapter_from_records(content: RecordDict) -> Adapter:
    """Rebuild an :class:`Adapter` from a lab's reply; raise :class:`AdapterError` when malformed."""
    if ADAPTER not in content.array_records or ADAPTER_META not in content.config_records:
        msg = "reply carries no adapter"
        raise AdapterError(msg)
    try:
        arrays = {name: decode_array(array) for name, array in content.array_records[ADAPTER].items()}
    except (TypeError, ValueError) as err:
        msg = f"adapter tensors cannot be decoded ({err})"
        raise AdapterError(msg) from err
    return adapter_from_fields(arrays, dict(content.config_records[ADAPTER_META]))


def label_stats_to_record(stats: LabelStatistics) -> ConfigRecord:
    """Label statistics as a one-field ConfigRecord (JSON; suppressed values are the string ``suppressed``)."""
    return ConfigRecord({"json": json.dumps(stats.to_dict(), sort_keys=True)})


def label_stats_from_record(record: Mapping[str, Any], *, min_count: int) -> LabelStatistics:
    """Parse and check label statistics: every released count must be at least ``min_count``.

    ``record`` is the :data:`LABEL_STATS` config record (or a dict of its values). Raise
    :class:`AdapterError` when it is malformed, :class:`PrivacyError` when it releases too much.
    """
    try:
        if set(record) != {"json"}:
            msg = f"the record must hold exactly 'json', got {sorted(map(str, record))[:10]}"
            raise ValueError(msg)
        stats = LabelStatistics.from_dict(_strict_json(record["json"], "label statistics"))
    except (TypeError, ValueError) as err:
        msg = f"label statistics are malformed ({err})"
        raise AdapterError(msg, hint="the lab runs an incompatible fedarches version") from err
    if stats.min_count < min_count:
        msg = f"label statistics were suppressed below k={stats.min_count}, the round requires k>={min_count}"
        raise PrivacyError(msg, hint="the lab must map again with --min-count at least the round's")
    k = stats.min_count  # at least the round's: a count between the two would belie the lab's own k
    for t in stats.types:
        for value in (t.n_cells, t.n_low_confidence):
            if value is not None and value < k:
                msg = f"label statistics release a count of {value} for {t.cell_type[:60]!r}, below k={k}"
                raise PrivacyError(msg)
    return stats


def _strict_json(text: Any, what: str) -> Any:
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


@dataclass(frozen=True)
class RoundConfig:
    """The coordinator's ``train.map`` settings, as a lab reads them (checked: they come over the network)."""

    round_id: str
    bundle_id: str
    max_epochs: int
    seed: int
    confidence_threshold: float
    min_count: int
    max_adapter_bytes: int

    @classmethod
    def from_record(cls, record: Any) -> RoundConfig:
        """Parse :data:`ROUND`; raise :class:`ProtocolError` naming the first bad field (never anything else)."""
        if not isinstance(record, Mapping):
            msg = f"the round message has no {ROUND!r} record"
            raise ProtocolError(msg)
        values = dict(record)
        try:
            return cls(
                round_id=_text(values, "round-id", pattern=_ROUND_ID),
                bundle_id=_text(values, "bundle-id", pattern=_BUNDLE_ID),
                max_epochs=_whole(values, "max-epochs", 0, 100_000),
                seed=_whole(values, "seed", 0, 2**32 - 1),
                confidence_threshold=_fraction(values, "confidence-threshold"),
                min_count=_whole(values, "min-count", 1, 1_000_000_000),
                max_adapter_bytes=_whole(values, "max-adapter-bytes", 1, 1 << 30),
            )
        except ProtocolError:
            raise
        except Exception as err:  # noqa: BLE001 - a hostile record must become a ProtocolError, whatever it holds
            msg = f"the round settings are malformed ({type(err).__name__})"
            raise ProtocolError(msg) from None


def secure_sum_settings(config: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The round id and type order of a secure-sum request; :class:`ProtocolError` unless well formed.

    The types must be distinct non-empty strings: a repeated type would count the same cells twice.
    """
    round_id = _text(config, "round-id", pattern=_ROUND_ID)
    raw = _field(config, "categories")
    try:
        categories = _strict_json(raw, "the secure sum's categories")
    except ValueError:
        categories = None
    if (
        not isinstance(categories, list)
        or not 0 < len(categories) <= 100_000
        or not all(isinstance(c, str) and 0 < len(c) <= 1_000 for c in categories)
        or len(set(categories)) != len(categories)
    ):
        msg = "the secure sum's 'categories' is not a JSON list of distinct cell-type names"
        raise ProtocolError(msg)
    return round_id, categories


_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")


def _field(values: Mapping[str, Any], key: str) -> Any:
    if key not in values:
        msg = f"the round settings lack {key!r}"
        raise ProtocolError(msg)
    return values[key]


def _text(values: Mapping[str, Any], key: str, *, pattern: re.Pattern[str]) -> str:
    value = _field(values, key)
    if not isinstance(value, str) or not pattern.match(value):
        msg = f"round setting {key!r} is {_shown(value)}, which is not a valid {key}"
        raise ProtocolError(msg)
    return value


def _whole(values: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = _field(values, key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        msg = f"round setting {key!r} is {_shown(value)}; it must be a whole number from {low} to {high}"
        raise ProtocolError(msg)
    return value


def _fraction(values: Mapping[str, Any], key: str) -> float:
    value = _field(values, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        msg = f"round setting {key!r} is {_shown(value)}; it must be a number from 0 to 1"
        raise ProtocolError(msg)
    return float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
