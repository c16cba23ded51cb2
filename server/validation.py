"""The coordinator's check of one lab's reply: accept it, or reject it with a reason. It never raises.

A reply arrives from the network and is hostile until checked. :func:`validate_reply` takes it in
a plain form, with no Flower types (:class:`PlainReply`: config and metric records as
``{record: {key: value}}``, array records as ``{record: {key: numpy array}}``), and what the round
expects (:class:`Expected`), and returns :class:`Accepted` or :class:`Rejected`. It checks meaning,
not only types:

- records: only those a lab may send (:data:`fedarches.shared.protocol.ALLOWED_REPLIES`), each of
  its kind, with only the keys it may hold;
- the lab record: the lab's own name, a short version string, a bounded epoch count, how it releases
  composition (``plain``, ``secure-sum`` or ``none``), optionally the head and sequence number of
  its ledger;
- the adapter (optional: a lab's policy may keep it in): made against this round's bundle; every
  tensor that surgery grows present exactly once and no other; each along its grown axis, right
  after the reference part, one column per new batch; float16/32/64, finite, of magnitude at most
  :data:`~fedarches.shared.adapters.MAX_ABS_VALUE`; at most ``max_adapter_bytes`` in all; batch
  names distinct, non-empty, printable, in the lab's namespace (``lab`` or ``lab/...``), not a
  reference batch, at most :data:`MAX_BATCHES` of at most :data:`MAX_BATCH_NAME_CHARS` characters;
- label statistics (present exactly when composition is ``plain``): strict JSON; only the bundle's
  cell types plus ``Unknown``, each at most once; counts integers (not booleans) or suppressed, at
  most :data:`MAX_COUNT`, at least the lab's ``k`` when released, which is at least the round's;
  low-confidence at most cells; mean confidences finite in [0, 1]; a privacy claim, when present,
  consistent with its mechanism (``laplace``: δ = 0; ``gaussian``: 0 < δ < 1; ε, scale and sensitivity
  finite and positive; unit ``cell`` or ``donor``), as :class:`~fedarches.shared.dp.PrivacySpend` writes it;
- timings: allow-listed names, finite, non-negative numbers.

Whatever else goes wrong while checking (a value of a type nothing expects) becomes a rejection
``malformed reply: <type>: <message>`` rather than an exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter
from fedarches.shared.errors import FedarchesError
from fedarches.shared.labels import LabelStatistics
from fedarches.shared.quality import UNKNOWN_LABEL

if TYPE_CHECKING:
    from fedarches.shared.bundle import ReferenceBundle

COMPOSITIONS = ("plain", "secure-sum", "none")
MAX_BATCHES = 4096
MAX_BATCH_NAME_CHARS = 256
MAX_VERSION_CHARS = 64
MAX_EPOCHS = 1_000_000
MAX_COUNT = 1_000_000_000  # cells per type; far above any single lab's dataset
MAX_LEDGER_SEQ = 2**63 - 1
MAX_REASON_CHARS = 300
LEDGER_KEYS = frozenset({"ledger-head", "ledger-seq"})  # the anchor of the lab's ledger; optional
PRIVACY_MECHANISMS = ("laplace", "gaussian")
PRIVACY_UNITS = ("cell", "donor")
_PRIVACY_KEYS = frozenset({"mechanism", "epsilon", "delta", "unit", "scale", "sensitivity"})
_LEDGER_HEAD = re.compile(r"[0-9a-f]{64}")
_LAB_REQUIRED = ("lab-name", "fedarches-version", "n-epochs", "composition")


@dataclass(frozen=True)
class PlainReply:
    """A lab's reply with no Flower types: record name → key → value, per record kind."""

    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    arrays: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    """What every reply of a round is checked against."""

    bundle_id: str
    reference_shapes: Mapping[str, tuple[int, ...]]
    grown: Mapping[str, int]  # tensors surgery grows → axis (fedarches.shared.surgery.grown_tensors)
    label_categories: Sequence[str]
    reference_batches: Sequence[str] = ()
    min_count: int = 11
    max_adapter_bytes: int = 1_048_576

    @classmethod
    def for_bundle(
        cls, bundle: ReferenceBundle, *, min_count: int = 11, max_adapter_bytes: int = 1_048_576
    ) -> Expected:
        """What replies against ``bundle`` must hold; runs surgery's shape probe once per bundle (seconds)."""
        from fedarches.shared.surgery import grown_tensors

        shapes = {name: tuple(value.shape) for name, value in bundle.reference_state().items()}
        return cls(
            bundle_id=bundle.bundle_id,
            reference_shapes=shapes,
            grown=grown_tensors(bundle, shapes),
            label_categories=tuple(bundle.label_categories),
            reference_batches=tuple(bundle.batch_categories),
            min_count=min_count,
            max_adapter_bytes=max_adapter_bytes,
        )


@dataclass(frozen=True)
class Accepted:
    """A reply that passed every check, in checked form."""

    adapter: Adapter | None
    label_statistics: LabelStatistics | None
    composition: str
    n_epochs: int
    timings: dict[str, float]
    fedarches_version: str
    ledger_head: str = ""
    ledger_seq: int | None = None


@dataclass(frozen=True)
class Rejected:
    """A reply refused, and why (one line a person can read)."""

    reason: str


class _Refused(Exception):
    """Internal: a rule a reply breaks."""


def validate_reply(reply: Any, expected: Any, *, lab: Any) -> Accepted | Rejected:
    """Accept or reject the reply of ``lab``; never raises, whatever the arguments hold.

    Parameters
    ----------
    reply
        The reply, as a :class:`PlainReply`.
    expected
        What the round expects, as an :class:`Expected`.
    lab
        The name of the lab the reply came from (the coordinator's registry says so, not the reply).
    """
    try:
        if not isinstance(lab, str):
            _refuse(f"the lab's name is a {type(lab).__name__}, not a string")
        return _validate(reply, expected, lab)
    except (_Refused, FedarchesError) as err:
        return Rejected(_one_line(_text(err)))
    except Exception as err:  # noqa: BLE001 - whatever a peer sent, it is that peer's rejection, never a crash
        return Rejected(_one_line(f"malformed reply: {type(err).__name__}: {_text(err)}"))


def _validate(reply: PlainReply, expected: Expected, lab: str) -> Accepted:
    if not isinstance(reply, PlainReply):
        _refuse(f"malformed reply: not a reply ({type(reply).__name__})")
    _check_records(reply)
    info = reply.configs.get(protocol.LAB)
    if info is None:
        _refuse(f"reply carries no {protocol.LAB} record")
    name = info.get("lab-name")
    if name != lab:
        _refuse(f"reply names lab {_show(name)}, not {lab!r}")
    missing = [k for k in _LAB_REQUIRED if k not in info]
    if missing:
        _refuse(f"record {protocol.LAB} lacks {missing}")
    version = _short_text(info["fedarches-version"], "fedarches-version", MAX_VERSION_CHARS)
    n_epochs = _bounded_int(info["n-epochs"], "n-epochs", 0, MAX_EPOCHS)
    composition = info["composition"]
    if composition not in COMPOSITIONS:
        _refuse(f"composition {_show(composition)} is not one of {list(COMPOSITIONS)}")
    head, seq = _ledger_anchor(info)

    adapter = None
    has_arrays, has_meta = protocol.ADAPTER in reply.arrays, protocol.ADAPTER_META in reply.configs
    if has_arrays != has_meta:
        _refuse(f"reply carries {protocol.ADAPTER if has_arrays else protocol.ADAPTER_META} without its counterpart")
    if has_arrays:  # a lab's policy may keep its adapter in
        adapter = _check_adapter(reply.arrays[protocol.ADAPTER], reply.configs[protocol.ADAPTER_META], expected, lab)

    stats = None
    if composition == "plain":
        if protocol.LABEL_STATS not in reply.configs:
            _refuse("lab releases composition as 'plain' but sent no label statistics")
        stats = _check_label_statistics(reply.configs[protocol.LABEL_STATS], expected)
    elif protocol.LABEL_STATS in reply.configs:
        _refuse(f"lab says it releases composition as {composition!r} but sent per-lab statistics")

    timings = _timings(reply.metrics.get(protocol.TIMINGS, {}))
    return Accepted(adapter, stats, str(composition), n_epochs, timings, version, head, seq)


def _check_records(reply: PlainReply) -> None:
    """Only allow-listed records, each of its kind and with its keys."""
    rules = protocol.ALLOWED_REPLIES[protocol.MAP]
    seen: dict[str, str] = {}
    for kind, records in (("config", reply.configs), ("array", reply.arrays), ("metric", reply.metrics)):
        if not isinstance(records, Mapping):
            _refuse(f"malformed reply: {kind} records are a {type(records).__name__}")
        for name, record in records.items():
            if name in seen:
                _refuse(f"record {_show(name)} is sent both as a {seen[name]} and a {kind} record")
            seen[name] = kind
            rule = rules.get(name) if isinstance(name, str) else None
            if rule is None:
                _refuse(f"record {_show(name)} is not one a lab may send")
            if rule.kind != kind:
                _refuse(f"record {name!r} must be a {rule.kind} record, not a {kind} record")
            if not isinstance(record, Mapping):
                _refuse(f"record {name!r} is a {type(record).__name__}, not a record")
            allowed = rule.keys
            if name == protocol.LAB and allowed is not None:
                allowed = allowed | LEDGER_KEYS
            if allowed is not None:
                extra = [k for k in record if k not in allowed]
                if extra:
                    _refuse(f"record {name!r} carries keys outside the protocol: {_show(sorted(map(str, extra)))}")


def _check_adapter(arrays: Any, meta: Any, expected: Expected, lab: str) -> Adapter:
    """The adapter of ``lab``'s reply, checked against the round; raise when it breaks a rule."""
    if not isinstance(arrays, Mapping):
        _refuse(f"adapter tensors are a {type(arrays).__name__}, not a record")
    not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        _refuse(f"adapter tensor {_show(not_arrays[0])} is not an array")
    adapter = protocol.adapter_from_fields(arrays, meta)
    if adapter.bundle_id != expected.bundle_id:
        _refuse(f"adapter was made against bundle {_show(adapter.bundle_id)}, not {expected.bundle_id}")
    _check_batch_names(adapter.batch_categories, expected, lab)
    adapter.check_against(expected.reference_shapes, max_bytes=expected.max_adapter_bytes, grown=expected.grown)
    return adapter


def _check_batch_names(batches: Sequence[Any], expected: Expected, lab: str) -> None:
    """Distinct, non-empty, printable strings in the lab's namespace that no reference batch has; bounded."""
    if not batches:
        _refuse("adapter names no new batch")
    if len(batches) > MAX_BATCHES:
        _refuse(f"adapter names {len(batches)} batches, more than {MAX_BATCHES}")
    for name in batches:
        if not isinstance(name, str) or not name:
            _refuse(f"batch name {_show(name)} is not a non-empty string")
        if len(name) > MAX_BATCH_NAME_CHARS or not name.isprintable():
            _refuse(f"batch name {_show(name)} is longer than {MAX_BATCH_NAME_CHARS} characters or not printable")
        if name != lab and not name.startswith(f"{lab}/"):
            _refuse(f"adapter names batch {_show(name)} outside the lab's namespace {lab!r}")
    if len(set(batches)) != len(batches):
        _refuse("adapter names a batch more than once")
    clash = sorted(set(batches) & set(expected.reference_batches))
    if clash:
        _refuse(f"adapter names batches {_show(clash)} that the atlas already holds")


def _check_label_statistics(record: Any, expected: Expected) -> LabelStatistics:
    """The label statistics of a reply (the :data:`~fedarches.shared.protocol.LABEL_STATS` record's values)."""
    if not isinstance(record, Mapping):
        _refuse(f"label statistics are a {type(record).__name__}, not a record")
    stats = protocol.label_stats_from_record(record, min_count=expected.min_count)
    allowed = {*expected.label_categories, UNKNOWN_LABEL}
    seen: set[str] = set()
    for t in stats.types:
        if t.cell_type not in allowed:
            _refuse(f"label statistics name cell type {_show(t.cell_type)}, which the bundle does not have")
        if t.cell_type in seen:
            _refuse(f"label statistics list cell type {t.cell_type!r} more than once")
        seen.add(t.cell_type)
        for count in (t.n_cells, t.n_low_confidence):
            if count is not None and count > MAX_COUNT:
                _refuse(f"label statistics count {count} cells of type {t.cell_type!r}, over {MAX_COUNT:,}")
    if stats.privacy is not None:
        _check_privacy_claim(stats.privacy)
    return stats


def _check_privacy_claim(claim: Any) -> None:
    """A differential-privacy claim as :meth:`fedarches.shared.dp.PrivacySpend.to_dict` writes it, consistent.

    Mechanism ``laplace`` (pure ε: δ = 0) or ``gaussian`` (0 < δ < 1); ε finite and positive; unit
    ``cell`` or ``donor``; scale and sensitivity finite and positive.
    """
    if not isinstance(claim, Mapping) or set(claim) != _PRIVACY_KEYS:
        _refuse(f"the privacy claim must hold exactly {sorted(_PRIVACY_KEYS)}")
    mechanism = claim["mechanism"]
    if mechanism not in PRIVACY_MECHANISMS:
        _refuse(f"the privacy claim names mechanism {_show(mechanism)}, not one of {list(PRIVACY_MECHANISMS)}")
    if claim["unit"] not in PRIVACY_UNITS:
        _refuse(f"the privacy claim's unit {_show(claim['unit'])} is not one of {list(PRIVACY_UNITS)}")
    numbers = {k: claim[k] for k in ("epsilon", "delta", "scale", "sensitivity")}
    for key, value in numbers.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            _refuse(f"the privacy claim's {key} {_show(value)} is not a finite, non-negative number")
    for key in ("epsilon", "scale", "sensitivity"):
        if numbers[key] <= 0:
            _refuse(f"the privacy claim's {key} must be positive, got {numbers[key]}")
    delta = numbers["delta"]
    if mechanism == "laplace" and delta != 0:
        _refuse(f"the privacy claim names the Laplace mechanism (pure ε) with δ = {delta}")
    if mechanism == "gaussian" and not 0 < delta < 1:
        _refuse(f"the privacy claim names the Gaussian mechanism with δ = {delta}, outside (0, 1)")


def _ledger_anchor(info: Mapping[str, Any]) -> tuple[str, int | None]:
    head = info.get("ledger-head", "")
    if "ledger-head" in info and (not isinstance(head, str) or not _LEDGER_HEAD.fullmatch(head)):
        _refuse(f"ledger-head {_show(head)} is not 64 lowercase hexadecimal characters")
    seq = None
    if "ledger-seq" in info:
        seq = _bounded_int(info["ledger-seq"], "ledger-seq", 1, MAX_LEDGER_SEQ)
    return head, seq


def _timings(record: Any) -> dict[str, float]:
    if not isinstance(record, Mapping):
        _refuse(f"timings are a {type(record).__name__}, not a record")
    out = {}
    for key, value in record.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            _refuse(f"timing {_show(key)} is {_show(value)}, not a finite, non-negative number of seconds")
        out[str(key)] = float(value)
    return out


def _bounded_int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        _refuse(f"{what} must be an integer from {low} to {high}, got {_show(value)}")
    return value


def _short_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        _refuse(f"{what} must be a printable string of 1 to {limit} characters, got {_show(value)}")
    return value


def _refuse(reason: str) -> NoReturn:
    raise _Refused(reason)


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: quoting what a peer sent, never at length."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is named by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # noqa: BLE001 - an exception whose text fails is named by its type alone
        return ""


def _one_line(text: str) -> str:
    """A reason for the report: one line, printable, at most :data:`MAX_REASON_CHARS` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text[: MAX_REASON_CHARS + 1])
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 3] + "..."
