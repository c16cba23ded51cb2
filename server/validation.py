"""The coordinator's check of one lab's reply: accept it, or reject it with a reason. It never raises.

A reply arrives from the network and is hostile until checked. :func:`validate_reply` takes it in
a plain form, with no Flower types (:class:`~fedarches.shared.wire.PlainContent`: config and metric
records as ``{record: {key: value}}``, array records as ``{record: {key: numpy array}}``), and what
the round expects (:class:`Expected`), and returns :class:`Accepted` or :class:`Rejected`. The
reply is decoded by its definition (:meth:`fedarches.shared.protocol.MapReply.from_plain`: only its
records, each of its kind and keys, values well formed); this module judges what it means:

- the lab record: the lab's own name (the registry's, not the reply's word); a short version
  string, a bounded epoch count, how it releases composition, optionally its ledger anchor;
- the adapter (optional: a lab's policy may keep it in): made against this round's bundle; every
  tensor that surgery grows present exactly once and no other; each along its grown axis, right
  after the reference part, one column per new batch; float16/32/64, finite, of magnitude at most
  :data:`~fedarches.shared.adapters.MAX_ABS_VALUE`; at most ``max_adapter_bytes`` in all; batch
  names distinct, non-empty, printable, in the lab's namespace (``lab`` or ``lab/...``), not a
  reference batch, at most :data:`MAX_BATCHES` of at most :data:`MAX_BATCH_NAME_CHARS` characters;
- label statistics (present exactly when composition is ``plain``): strict JSON; only the bundle's
  cell types plus ``Unknown``, each at most once; counts integers (not booleans) or suppressed, at
  most :data:`MAX_COUNT`, at least the lab's ``k`` when released, which must be at least the k the
  round accepts (the lab's policy decides its k; the round only states what it accepts);
  low-confidence at most cells; mean confidences finite in [0, 1]; a privacy claim, when present,
  consistent with its mechanism (``laplace``: δ = 0; ``gaussian``: 0 < δ < 1; ε, scale and sensitivity
  finite and positive; unit ``cell`` or ``donor``), as :class:`~fedarches.shared.dp.PrivacySpend` writes it;
- new-type prototypes (optional: a lab's policy releases them): made against this round's bundle,
  whose model holds prototypes (scPoli); names neither the bundle's types nor ``Unknown``; sums of
  the bundle's latent size, finite and bounded; counts of at least one cell;
- timings: allow-listed names, finite, non-negative numbers.

Whatever else goes wrong while checking (a value of a type nothing expects) becomes a rejection
``malformed reply: <type>: <message>`` rather than an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from fedarches.shared.adapters import Adapter
from fedarches.shared.errors import FedarchesError
from fedarches.shared.labels import LabelStatistics
from fedarches.shared.protocol import MapReply
from fedarches.shared.prototypes import PROTOTYPES_TENSOR, NewTypePrototypes
from fedarches.shared.quality import UNKNOWN_LABEL
from fedarches.shared.wire import PlainContent, one_line, shown

if TYPE_CHECKING:
    from fedarches.shared.bundle import ReferenceBundle

MAX_BATCHES = 4096
MAX_BATCH_NAME_CHARS = 256
MAX_COUNT = 1_000_000_000  # cells per type; far above any single lab's dataset
MAX_REASON_CHARS = 300
PRIVACY_MECHANISMS = ("laplace", "gaussian")
PRIVACY_UNITS = ("cell", "donor")
_PRIVACY_KEYS = frozenset({"mechanism", "epsilon", "delta", "unit", "scale", "sensitivity"})


@dataclass(frozen=True)
class Expected:
    """What every reply of a round is checked against."""

    bundle_id: str
    reference_shapes: Mapping[str, tuple[int, ...]]
    grown: Mapping[str, int]  # tensors surgery grows → axis (fedarches.shared.surgery.grown_tensors)
    label_categories: Sequence[str]
    reference_batches: Sequence[str]
    min_count: int  # the smallest k the round accepts
    max_adapter_bytes: int

    @classmethod
    def for_bundle(
        cls,
        bundle: ReferenceBundle,
        *,
        min_count: int,
        max_adapter_bytes: int,
        grown: Mapping[str, int] | None = None,
    ) -> Expected:
        """What replies against ``bundle`` must hold.

        ``grown``: what surgery grows (:func:`fedarches.shared.surgery.grown_tensors`), when an earlier
        probe of this bundle found it; otherwise surgery's shape probe runs now (seconds: it imports
        scvi-tools).
        """
        from fedarches.shared.surgery import grown_tensors

        shapes = {name: tuple(value.shape) for name, value in bundle.reference_state().items()}
        return cls(
            bundle_id=bundle.bundle_id,
            reference_shapes=shapes,
            grown=dict(grown) if grown is not None else grown_tensors(bundle, shapes),
            label_categories=tuple(bundle.label_categories),
            reference_batches=tuple(bundle.batch_categories),
            min_count=min_count,
            max_adapter_bytes=max_adapter_bytes,
        )


@dataclass(frozen=True)
class Accepted:
    """A reply that passed every check, decoded."""

    reply: MapReply


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
        The reply, as a :class:`~fedarches.shared.wire.PlainContent`.
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
        return Rejected(one_line(_text(err), MAX_REASON_CHARS))
    except Exception as err:  # noqa: BLE001 - whatever a peer sent, it is that peer's rejection, never a crash
        return Rejected(one_line(f"malformed reply: {type(err).__name__}: {_text(err)}", MAX_REASON_CHARS))


def _validate(plain: PlainContent, expected: Expected, lab: str) -> Accepted:
    reply = MapReply.from_plain(plain)
    if reply.lab.lab_name != lab:
        _refuse(f"reply names lab {shown(reply.lab.lab_name)}, not {lab!r}")
    if reply.adapter is not None:  # a lab's policy may keep its adapter in
        _check_adapter(reply.adapter, expected, lab)
    if reply.label_statistics is not None:
        _check_label_statistics(reply.label_statistics, expected)
    if reply.new_types is not None:
        _check_new_types(reply.new_types, expected)
    return Accepted(reply)


def _check_new_types(new_types: NewTypePrototypes, expected: Expected) -> None:
    """Raise unless the prototypes fit this round's bundle: its id, a model with prototypes, new names only."""
    if new_types.bundle_id != expected.bundle_id:
        _refuse(f"new-type prototypes were made against bundle {shown(new_types.bundle_id)}, not {expected.bundle_id}")
    shape = expected.reference_shapes.get(PROTOTYPES_TENSOR)
    if shape is None or len(shape) != 2:
        _refuse("the lab sent new-type prototypes, but this bundle's model has no prototypes (only scPoli's has)")
    arrays, meta = new_types.to_arrays()
    NewTypePrototypes.from_arrays(
        arrays, meta, n_latent=shape[1], known_types=[*expected.label_categories, UNKNOWN_LABEL]
    )


def _check_adapter(adapter: Adapter, expected: Expected, lab: str) -> None:
    """Raise unless ``lab``'s adapter was made against this round's bundle and grows only what surgery grows."""
    if adapter.bundle_id != expected.bundle_id:
        _refuse(f"adapter was made against bundle {shown(adapter.bundle_id)}, not {expected.bundle_id}")
    _check_batch_names(adapter.batch_categories, expected, lab)
    adapter.check_against(expected.reference_shapes, max_bytes=expected.max_adapter_bytes, grown=expected.grown)


def _check_batch_names(batches: Sequence[Any], expected: Expected, lab: str) -> None:
    """Distinct, non-empty, printable strings in the lab's namespace that no reference batch has; bounded."""
    if not batches:
        _refuse("adapter names no new batch")
    if len(batches) > MAX_BATCHES:
        _refuse(f"adapter names {len(batches)} batches, more than {MAX_BATCHES}")
    for name in batches:
        if not isinstance(name, str) or not name:
            _refuse(f"batch name {shown(name)} is not a non-empty string")
        if len(name) > MAX_BATCH_NAME_CHARS or not name.isprintable():
            _refuse(f"batch name {shown(name)} is longer than {MAX_BATCH_NAME_CHARS} characters or not printable")
        if name != lab and not name.startswith(f"{lab}/"):
            _refuse(f"adapter names batch {shown(name)} outside the lab's namespace {lab!r}")
    if len(set(batches)) != len(batches):
        _refuse("adapter names a batch more than once")
    clash = sorted(set(batches) & set(expected.reference_batches))
    if clash:
        _refuse(f"adapter names batches {shown(clash)} that the atlas already holds")


def _check_label_statistics(stats: LabelStatistics, expected: Expected) -> None:
    """Raise unless the label statistics are suppressed at the round's k or above and name only the bundle's types."""
    if stats.min_count < expected.min_count:
        _refuse(
            f"label statistics were suppressed below k={stats.min_count}; the round accepts k>={expected.min_count} "
            f"(the lab sets release.min_count to at least {expected.min_count} in its policy.toml)"
        )
    allowed = {*expected.label_categories, UNKNOWN_LABEL}
    seen: set[str] = set()
    for t in stats.types:
        if t.cell_type not in allowed:
            _refuse(f"label statistics name cell type {shown(t.cell_type)}, which the bundle does not have")
        if t.cell_type in seen:
            _refuse(f"label statistics list cell type {t.cell_type!r} more than once")
        seen.add(t.cell_type)
        for count in (t.n_cells, t.n_low_confidence):
            if count is not None and count > MAX_COUNT:
                _refuse(f"label statistics count {count} cells of type {t.cell_type!r}, over {MAX_COUNT:,}")
    if stats.privacy is not None:
        _check_privacy_claim(stats.privacy)


def _check_privacy_claim(claim: Any) -> None:
    """A differential-privacy claim as :meth:`fedarches.shared.dp.PrivacySpend.to_dict` writes it, consistent.

    Mechanism ``laplace`` (pure ε: δ = 0) or ``gaussian`` (0 < δ < 1); ε finite and positive; unit
    ``cell`` or ``donor``; scale and sensitivity finite and positive.
    """
    if not isinstance(claim, Mapping) or set(claim) != _PRIVACY_KEYS:
        _refuse(f"the privacy claim must hold exactly {sorted(_PRIVACY_KEYS)}")
    mechanism = claim["mechanism"]
    if mechanism not in PRIVACY_MECHANISMS:
        _refuse(f"the privacy claim names mechanism {shown(mechanism)}, not one of {list(PRIVACY_MECHANISMS)}")
    if claim["unit"] not in PRIVACY_UNITS:
        _refuse(f"the privacy claim's unit {shown(claim['unit'])} is not one of {list(PRIVACY_UNITS)}")
    numbers = {k: claim[k] for k in ("epsilon", "delta", "scale", "sensitivity")}
    for key, value in numbers.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            _refuse(f"the privacy claim's {key} {shown(value)} is not a finite, non-negative number")
    for key in ("epsilon", "scale", "sensitivity"):
        if numbers[key] <= 0:
            _refuse(f"the privacy claim's {key} must be positive, got {numbers[key]}")
    delta = numbers["delta"]
    if mechanism == "laplace" and delta != 0:
        _refuse(f"the privacy claim names the Laplace mechanism (pure ε) with δ = {delta}")
    if mechanism == "gaussian" and not 0 < delta < 1:
        _refuse(f"the privacy claim names the Gaussian mechanism with δ = {delta}, outside (0, 1)")


def _refuse(reason: str) -> NoReturn:
    raise _Refused(reason)


def _text(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # noqa: BLE001 - an exception whose text fails is named by its type alone
        return ""
