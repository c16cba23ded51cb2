"""The messages between the coordinator and the labs: one typed definition each, with its records.

Coordinator → lab, message type :data:`MAP` (``train.map``)
    :class:`MapRequest` (the round's settings, record :data:`ROUND`) and, only when the coordinator
    has no record of the lab holding the bundle, :class:`BundleTransfer` (record :data:`BUNDLE`). A
    lab that lost its copy answers with error code ``LAB_ERROR_CODE_BASE + 20`` and gets it again.

Lab → coordinator, reply to :data:`MAP`
    :class:`MapReply`: :class:`LabInfo` (record :data:`LAB`), timings (:data:`TIMINGS`), the adapter
    (:data:`ADAPTER` and :data:`ADAPTER_META`) unless the lab's policy keeps it in, label
    statistics (:data:`LABEL_STATS`) exactly when the lab releases composition as
    :attr:`Composition.PLAIN`, and prototypes of cell types the atlas lacks (:data:`NEW_TYPES` and
    :data:`NEW_TYPES_META`) when the lab's policy releases them (scPoli atlases).

Secure sum, message type :data:`SECURE_SUM` (``train``)
    Flower's SecAgg+ protocol in four stages adds up the labs' label-count vectors.
    :class:`SecureSumRequest` is what the coordinator asks for (round, type order);
    :data:`SECURE_SUM_REPLY_RECORDS` what a lab's stage replies may hold.

The egress allow-list (:data:`ALLOWED_REPLIES`, enforced on every message a lab sends by
:func:`check_egress`) and the coordinator's decoding (:meth:`MapReply.from_plain`) both derive from
these definitions: a new field of a reply is a change to its definition here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedarches.shared._constants import MAX_BUNDLE_BYTES, MAX_BUNDLE_ENTRIES, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from fedarches.shared.adapters import Adapter
from fedarches.shared.bundle_files import check_file_names
from fedarches.shared.errors import AdapterError, BundleIntegrityError, BundleSizeError, PrivacyError, ProtocolError
from fedarches.shared.labels import LabelStatistics
from fedarches.shared.prototypes import NewTypePrototypes
from fedarches.shared.wire import PlainContent, RecordRule, check_content, check_records, decode_array, peer_json, shown

MAP = "train.map"
SECURE_SUM = "train"  # Flower's SecAgg+ workflow sends plain ``train`` messages
# Lab errors travel as Flower error codes LAB_ERROR_CODE_BASE + the fedarches exit code, with no text.
LAB_ERROR_CODE_BASE = 1000

ROUND = "fedarches.round"
BUNDLE = "fedarches.bundle"
ADAPTER = "fedarches.adapter"
ADAPTER_META = "fedarches.adapter-meta"
LABEL_STATS = "fedarches.label-stats"
NEW_TYPES = "fedarches.new-types"
NEW_TYPES_META = "fedarches.new-types-meta"
LAB = "fedarches.lab"
TIMINGS = "fedarches.timings"
SECAGG_RECORD = RECORD_KEY_CONFIGS  # "secaggplus_configs"

MAX_VERSION_CHARS = 64
MAX_EPOCHS = 1_000_000
MAX_LEDGER_SEQ = 2**63 - 1
_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_BUNDLE_ID = re.compile(r"^[0-9a-f]{16}$")
_LEDGER_HEAD = re.compile(r"[0-9a-f]{64}")
_BAD_BUNDLE_HINT = "the coordinator sent a malformed bundle and nothing was stored; tell the atlas maintainers"


class Composition(StrEnum):
    """How a lab's policy releases the composition of its cells."""

    PLAIN = "plain"  # per-lab label statistics, suppressed below k
    SECURE_SUM = "secure-sum"  # only inside a SecAgg+ sum over labs
    NONE = "none"  # not at all


def _wire(name: str) -> str:
    """A field's key on the wire: ``round_id`` → ``round-id``."""
    return name.replace("_", "-")


# --- coordinator → lab --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapRequest:
    """The round's settings, as the coordinator sends them and a lab reads them (record :data:`ROUND`).

    Attributes
    ----------
    round_id, bundle_id
        The round, and the bundle to map against.
    max_epochs
        Surgery epochs; 0 lets each lab choose from its query's size.
    seed
        Seed of every lab's surgery.
    confidence_threshold
        Cells below it are flagged low-confidence.
    min_count
        The smallest k the coordinator accepts in label statistics. The lab's own policy decides
        what it releases; a lab whose k is smaller refuses before mapping.
    max_adapter_bytes
        The largest adapter the coordinator accepts.
    """

    round_id: str
    bundle_id: str
    max_epochs: int
    seed: int
    confidence_threshold: float
    min_count: int
    max_adapter_bytes: int

    def to_record(self) -> ConfigRecord:
        """The settings as a :class:`~flwr.app.ConfigRecord`, checked as a lab will check them."""
        record = ConfigRecord({_wire(f.name): getattr(self, f.name) for f in fields(self)})
        MapRequest.from_record(record)  # a coordinator never sends what a lab would refuse
        return record

    @classmethod
    def from_record(cls, record: Any) -> MapRequest:
        """Parse :data:`ROUND`; raise :class:`ProtocolError` naming the first bad field (never anything else)."""
        if not isinstance(record, Mapping):
            msg = f"the round message has no {ROUND!r} record"
            raise ProtocolError(msg)
        try:
            values = dict(record)
            return cls(**{f.name: _ROUND_CHECKS[f.name](values, _wire(f.name)) for f in fields(cls)})
        except ProtocolError:
            raise
        except Exception as err:  # noqa: BLE001 - a hostile record must become a ProtocolError, whatever it holds
            msg = f"the round settings are malformed ({type(err).__name__})"
            raise ProtocolError(msg) from None


ROUND_KEYS = tuple(_wire(f.name) for f in fields(MapRequest))


@dataclass(frozen=True)
class BundleTransfer:
    """A signed bundle's files (manifest and signature included) travelling as uint8 arrays (:data:`BUNDLE`)."""

    files: Mapping[str, bytes]

    def to_record(self) -> ArrayRecord:
        """The files as an :class:`~flwr.app.ArrayRecord` of 1-D ``uint8`` arrays."""
        return ArrayRecord(
            array_dict={name: Array(np.frombuffer(data, dtype=np.uint8)) for name, data in self.files.items()}
        )

    @classmethod
    def from_record(cls, record: ArrayRecord, *, max_bytes: int = MAX_BUNDLE_BYTES) -> BundleTransfer:
        """Read the files (not yet verified; the lab's bundle store verifies them before keeping any).

        The names must follow the bundle's rules (:func:`~fedarches.shared.bundle_files.check_file_names`),
        each file must be a 1-D ``uint8`` array, and all of them at most ``max_bytes`` plus the
        manifest and signature. Raises only :class:`BundlePathError`, :class:`BundleSizeError` or
        :class:`BundleIntegrityError`.
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
        return cls(files)


# --- lab → coordinator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabInfo:
    """Who replies and how (record :data:`LAB`); the ledger anchor is optional."""

    lab_name: str
    fedarches_version: str
    n_epochs: int
    composition: Composition
    ledger_seq: int | None = None  # the lab's newest ledger entry: an anchor kept outside the lab
    ledger_head: str = ""  # that entry's hash

    def to_record(self) -> ConfigRecord:
        """The record, without the ledger fields when there is no anchor."""
        values = {_wire(f.name): getattr(self, f.name) for f in fields(self)}
        values["composition"] = str(self.composition)
        return ConfigRecord({k: v for k, v in values.items() if v is not None and v != ""})

    @classmethod
    def from_values(cls, info: Mapping[str, Any]) -> LabInfo:
        """Parse the record's values; raise :class:`ProtocolError` naming the first bad one."""
        missing = [_wire(f.name) for f in fields(cls) if f.name in _LAB_REQUIRED and _wire(f.name) not in info]
        if missing:
            msg = f"record {LAB} lacks {missing}"
            raise ProtocolError(msg)
        name = info["lab-name"]
        if not isinstance(name, str) or not name:
            msg = f"lab-name {shown(name)} is not a non-empty string"
            raise ProtocolError(msg)
        composition = info["composition"]
        if composition not in tuple(Composition):
            msg = f"composition {shown(composition)} is not one of {[str(c) for c in Composition]}"
            raise ProtocolError(msg)
        head = info.get("ledger-head", "")
        if "ledger-head" in info and (not isinstance(head, str) or not _LEDGER_HEAD.fullmatch(head)):
            msg = f"ledger-head {shown(head)} is not 64 lowercase hexadecimal characters"
            raise ProtocolError(msg)
        seq = info.get("ledger-seq")
        return cls(
            lab_name=name,
            fedarches_version=_short_text(info["fedarches-version"], "fedarches-version", MAX_VERSION_CHARS),
            n_epochs=_bounded_int(info["n-epochs"], "n-epochs", 0, MAX_EPOCHS),
            composition=Composition(composition),
            ledger_seq=None if seq is None else _bounded_int(seq, "ledger-seq", 1, MAX_LEDGER_SEQ),
            ledger_head=head,
        )


_LAB_REQUIRED = ("lab_name", "fedarches_version", "n_epochs", "composition")
# Seconds per phase of the lab's mapping; ``cpu_s``: CPU seconds of training and prediction; ``handler_s``:
# the whole handler, from the message to the reply (bundle, mapping, writing the outputs, the release).
TIMING_KEYS = (
    "validate_s",
    "surgery_setup_s",
    "train_s",
    "predict_s",
    "total_s",
    "cpu_s",
    "receive_bundle_s",
    "handler_s",
)
ADAPTER_META_KEYS = ("format", "bundle-id", "batch-categories", "slices")
NEW_TYPES_META_KEYS = ("format", "bundle-id", "names")
NEW_TYPES_ARRAYS = ("sums", "counts")


@dataclass(frozen=True)
class MapReply:
    """What a lab sends after mapping: who it is, its timings, and what its policy released.

    Attributes
    ----------
    lab
        Name, version, epochs trained, how composition is released, ledger anchor.
    timings
        Seconds per phase (:data:`TIMING_KEYS`).
    adapter
        The new batch columns surgery trained; None when the policy keeps adapters in.
    label_statistics
        Suppressed (optionally noised) label statistics; present exactly when
        ``lab.composition`` is :attr:`Composition.PLAIN`.
    new_types
        Sums and counts of the lab's cells of types the atlas lacks (its prototypes); None unless
        the lab's policy releases them.
    """

    lab: LabInfo
    timings: Mapping[str, float]
    adapter: Adapter | None = None
    label_statistics: LabelStatistics | None = None
    new_types: NewTypePrototypes | None = None

    RECORDS: ClassVar[dict[str, RecordRule]] = {
        LAB: RecordRule("config", frozenset(_wire(f.name) for f in fields(LabInfo))),
        TIMINGS: RecordRule("metric", frozenset(TIMING_KEYS)),
        ADAPTER: RecordRule("array", None),
        ADAPTER_META: RecordRule("config", frozenset(ADAPTER_META_KEYS)),
        LABEL_STATS: RecordRule("config", frozenset({"json"})),
        NEW_TYPES: RecordRule("array", frozenset(NEW_TYPES_ARRAYS)),
        NEW_TYPES_META: RecordRule("config", frozenset(NEW_TYPES_META_KEYS)),
    }

    def to_content(self) -> RecordDict:
        """The reply's records."""
        content = RecordDict({LAB: self.lab.to_record(), TIMINGS: MetricRecord(dict(self.timings))})
        if self.adapter is not None:
            arrays, meta = self.adapter.to_arrays()
            content[ADAPTER] = ArrayRecord(
                array_dict={name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()}
            )
            content[ADAPTER_META] = ConfigRecord(
                {
                    "format": meta["format"],
                    "bundle-id": meta["bundle_id"],
                    "batch-categories": list(meta["batch_categories"]),
                    "slices": json.dumps(meta["slices"], sort_keys=True),
                }
            )
        if self.label_statistics is not None:
            content[LABEL_STATS] = ConfigRecord({"json": json.dumps(self.label_statistics.to_dict(), sort_keys=True)})
        if self.new_types is not None:
            arrays, meta = self.new_types.to_arrays()
            content[NEW_TYPES] = ArrayRecord(
                array_dict={name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()}
            )
            content[NEW_TYPES_META] = ConfigRecord(
                {"format": meta["format"], "bundle-id": meta["bundle_id"], "names": json.dumps(meta["names"])}
            )
        return content

    @classmethod
    def from_plain(cls, reply: PlainContent) -> MapReply:
        """Decode a reply in plain form: only its records, each well formed.

        What it means for a round (the lab's name against the registry, the adapter against the
        bundle, the label statistics' k against the round's) is the coordinator's to judge.

        Raises
        ------
        ProtocolError
            A record that is not the reply's, of the wrong kind, with unknown keys or bad values.
        AdapterError
            An adapter or label statistics that do not decode.
        PrivacyError
            Label statistics that release a count below their own k.
        """
        check_records(reply, cls.RECORDS)
        if LAB not in reply.configs:
            msg = f"reply carries no {LAB} record"
            raise ProtocolError(msg)
        lab = LabInfo.from_values(reply.configs[LAB])
        has_arrays, has_meta = ADAPTER in reply.arrays, ADAPTER_META in reply.configs
        if has_arrays != has_meta:
            msg = f"reply carries {ADAPTER if has_arrays else ADAPTER_META} without its counterpart"
            raise ProtocolError(msg)
        adapter = _adapter(reply.arrays[ADAPTER], reply.configs[ADAPTER_META]) if has_arrays else None
        stats = None
        if lab.composition == Composition.PLAIN:
            if LABEL_STATS not in reply.configs:
                msg = "lab releases composition as 'plain' but sent no label statistics"
                raise ProtocolError(msg)
            stats = decode_label_statistics(reply.configs[LABEL_STATS])
        elif LABEL_STATS in reply.configs:
            msg = f"lab says it releases composition as {str(lab.composition)!r} but sent per-lab statistics"
            raise ProtocolError(msg)
        has_types, has_types_meta = NEW_TYPES in reply.arrays, NEW_TYPES_META in reply.configs
        if has_types != has_types_meta:
            msg = f"reply carries {NEW_TYPES if has_types else NEW_TYPES_META} without its counterpart"
            raise ProtocolError(msg)
        new_types = _new_types(reply.arrays[NEW_TYPES], reply.configs[NEW_TYPES_META]) if has_types else None
        return cls(lab, _timings(reply.metrics.get(TIMINGS, {})), adapter, stats, new_types)

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary for a report: adapter shapes (no values), statistics, timings, lab info."""
        return {
            "n_epochs": self.lab.n_epochs,
            "composition": str(self.lab.composition),
            "ledger_head": self.lab.ledger_head,
            "ledger_seq": self.lab.ledger_seq,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "adapter": None
            if self.adapter is None
            else {
                "batches": list(self.adapter.batch_categories),
                "tensors": self.adapter.describe(),
                "bytes": self.adapter.nbytes,
            },
            "label_statistics": None if self.label_statistics is None else self.label_statistics.to_dict(),
            "new_types": None if self.new_types is None else _type_counts(self.new_types),
        }


def _adapter(arrays: Any, meta: Any) -> Adapter:
    """An :class:`Adapter` from its tensors and the plain values of its :data:`ADAPTER_META` record."""
    if not isinstance(arrays, Mapping):
        msg = f"adapter tensors are a {type(arrays).__name__}, not a record"
        raise AdapterError(msg)
    not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        msg = f"adapter tensor {shown(not_arrays[0])} is not an array"
        raise AdapterError(msg)
    slices = _meta_json(meta, ADAPTER_META_KEYS, "slices", "adapter")
    return Adapter.from_arrays(
        arrays,
        {
            "format": meta["format"],
            "bundle_id": meta["bundle-id"],
            "batch_categories": meta["batch-categories"],
            "slices": slices,
        },
    )


def _type_counts(new_types: NewTypePrototypes) -> dict[str, float]:
    return {name: round(float(n), 1) for name, n in zip(new_types.names, new_types.counts, strict=True)}


def _new_types(arrays: Any, meta: Any) -> NewTypePrototypes:
    """:class:`NewTypePrototypes` from its arrays and the plain values of its :data:`NEW_TYPES_META` record."""
    names = _meta_json(meta, NEW_TYPES_META_KEYS, "names", "new-type")
    values = {"format": meta["format"], "bundle_id": meta["bundle-id"], "names": names}
    return NewTypePrototypes.from_arrays(arrays, values)


def _meta_json(meta: Any, keys: tuple[str, ...], field: str, what: str) -> Any:
    """The JSON value of ``meta[field]`` in a metadata record that must hold exactly ``keys``."""
    if not isinstance(meta, Mapping) or set(meta) != set(keys):
        msg = f"{what} metadata must hold exactly {sorted(keys)}"
        raise AdapterError(msg)
    try:
        return peer_json(meta[field], f"{what} {field}")
    except ValueError as err:
        msg = f"{what} metadata is malformed ({err})"
        raise AdapterError(msg) from err


def decode_label_statistics(record: Mapping[str, Any]) -> LabelStatistics:
    """Parse the :data:`LABEL_STATS` record's values, and check that no released count is below its own k.

    Raise :class:`AdapterError` when it is malformed, :class:`PrivacyError` when a count is below k.
    """
    try:
        if not isinstance(record, Mapping) or set(record) != {"json"}:
            msg = "the record must hold exactly 'json'"
            raise ValueError(msg)
        stats = LabelStatistics.from_dict(peer_json(record["json"], "label statistics"))
    except (TypeError, ValueError) as err:
        msg = f"label statistics are malformed ({err})"
        raise AdapterError(msg, hint="the lab runs an incompatible fedarches version") from err
    for t in stats.types:
        for value in (t.n_cells, t.n_low_confidence):
            if value is not None and value < stats.min_count:
                msg = f"label statistics release {value} for {t.cell_type[:60]!r}, a count below k={stats.min_count}"
                raise PrivacyError(msg)
    return stats


def _timings(record: Any) -> dict[str, float]:
    if not isinstance(record, Mapping):
        msg = f"timings are a {type(record).__name__}, not a record"
        raise ProtocolError(msg)
    out = {}
    for key, value in record.items():
        if type(value) not in (int, float) or not np.isfinite(value) or value < 0:
            msg = f"timing {shown(key)} is {shown(value)}, not a finite, non-negative number of seconds"
            raise ProtocolError(msg)
        out[str(key)] = float(value)
    return out


# --- the secure sum -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureSumRequest:
    """What the coordinator asks a secure sum for: the round and the order of the cell types summed."""

    round_id: str
    categories: tuple[str, ...]

    def to_config(self) -> dict[str, str]:
        """The settings as the config of SecAgg+'s ``train`` messages."""
        return {"round-id": self.round_id, "categories": json.dumps(list(self.categories))}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SecureSumRequest:
        """Parse the settings; :class:`ProtocolError` unless the types are distinct non-empty strings.

        A repeated type would count the same cells twice.
        """
        round_id = _text(config, "round-id", pattern=_ROUND_ID)
        raw = _field(config, "categories")
        try:
            categories = peer_json(raw, "the secure sum's categories")
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
        return cls(round_id, tuple(categories))


SECURE_SUM_REPLY_RECORDS: dict[str, RecordRule] = {  # Flower's SecAgg+ stages and legacy fit-result records
    SECAGG_RECORD: RecordRule(
        "config", frozenset({"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"}), allow_bytes=True
    ),
    "fitres.parameters": RecordRule("array", frozenset()),
    "fitres.metrics": RecordRule("config", frozenset()),
    "fitres.num_examples": RecordRule("metric", frozenset({"num_examples"})),
    "fitres.status": RecordRule("config", frozenset({"code", "message"})),
}

ALLOWED_REPLIES: dict[str, dict[str, RecordRule]] = {MAP: MapReply.RECORDS, SECURE_SUM: SECURE_SUM_REPLY_RECORDS}


def check_egress(message_type: str, content: RecordDict, *, max_array_bytes: int) -> None:
    """Raise :class:`PrivacyError` unless ``content`` holds only what :data:`ALLOWED_REPLIES` permits."""
    rules = ALLOWED_REPLIES.get(message_type)
    if rules is None:
        msg = f"a lab never answers {message_type!r} messages"
        raise PrivacyError(msg)
    check_content(content, rules, what=repr(message_type), max_array_bytes=max_array_bytes)


# --- field checks (what arrives is hostile until checked) ---------------------------------------------


def _field(values: Mapping[str, Any], key: str) -> Any:
    if key not in values:
        msg = f"the round settings lack {key!r}"
        raise ProtocolError(msg)
    return values[key]


def _text(values: Mapping[str, Any], key: str, *, pattern: re.Pattern[str]) -> str:
    value = _field(values, key)
    if not isinstance(value, str) or not pattern.match(value):
        msg = f"round setting {key!r} is {shown(value, 40)}, which is not a valid {key}"
        raise ProtocolError(msg)
    return value


def _whole(low: int, high: int) -> Callable[[Mapping[str, Any], str], int]:
    def check(values: Mapping[str, Any], key: str) -> int:
        value = _field(values, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            msg = f"round setting {key!r} is {shown(value, 40)}; it must be a whole number from {low} to {high}"
            raise ProtocolError(msg)
        return value

    return check


def _fraction(values: Mapping[str, Any], key: str) -> float:
    value = _field(values, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        msg = f"round setting {key!r} is {shown(value, 40)}; it must be a number from 0 to 1"
        raise ProtocolError(msg)
    return float(value)


_ROUND_CHECKS: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "round_id": lambda v, k: _text(v, k, pattern=_ROUND_ID),
    "bundle_id": lambda v, k: _text(v, k, pattern=_BUNDLE_ID),
    "max_epochs": _whole(0, 100_000),
    "seed": _whole(0, 2**32 - 1),
    "confidence_threshold": _fraction,
    "min_count": _whole(1, 1_000_000_000),
    "max_adapter_bytes": _whole(1, 1 << 30),
}


def _bounded_int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        msg = f"{what} must be an integer from {low} to {high}, got {shown(value)}"
        raise ProtocolError(msg)
    return value


def _short_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        msg = f"{what} must be a printable string of 1 to {limit} characters, got {shown(value)}"
        raise ProtocolError(msg)
    return value
