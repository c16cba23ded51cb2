"""One mapping round over a Flower :class:`~flwr.serverapp.Grid`: the coordinator's logic.

1. Wait (``wait-for-labs`` seconds at most) until every registered lab's SuperNode is online.
   A node whose id is not a registered lab's is left out.
2. ``train``: the round settings, and the signed bundle only to labs with no record of holding
   it (a lab is recorded as holding a bundle once its adapter for it was accepted; a lab that
   lost its copy says so and gets it again).
3. Collect replies until all arrived, or the round's ``timeout``. A lab whose node goes offline
   gets Flower's ``node unavailable`` error reply and is reported as dropped.
4. Validate each reply (sender identity, then :func:`fedarches.server.validation.validate_reply`:
   records and keys, adapter tensors against the ones surgery grows, batch names, label
   statistics and their privacy claim) and keep the valid ones. A reply that cannot even be
   decoded is that lab's rejection; nothing a lab sends stops the round for the others.
5. Secure sum: the accepted labs whose policy releases composition only inside a secure sum
   add up their (noised) label-count vectors with SecAgg+ (:mod:`fedarches.server.secure_sum`);
   the coordinator learns the consortium total, never one lab's counts.
6. Merge the accepted adapters into an updated atlas (a new signed bundle) when at least
   ``min-labs`` labs were accepted, then write the consortium report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedarches.server.coordinator import CoordinatorDir
from fedarches.server.messaging import POLL_S, exchange
from fedarches.server.secure_sum import SecureSumResult, secure_sum
from fedarches.server.settings import RoundSettings
from fedarches.server.validation import Accepted, Expected, validate_reply
from fedarches.shared import protocol
from fedarches.shared._io import atomic_write_bytes
from fedarches.shared.adapters import Adapter
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.errors import BundleError, BundleIntegrityError
from fedarches.shared.labels import LabelStatistics
from fedarches.shared.protocol import Composition, MapReply
from fedarches.shared.quality import UNKNOWN_LABEL
from fedarches.shared.wire import PlainContent

log = logging.getLogger("fedarches.server")


@dataclass
class LabOutcome:
    """What happened to one registered lab in a round."""

    name: str
    node_id: int
    status: str = "offline"  # offline | excluded | dropped | timed-out | failed | rejected | accepted
    reason: str = ""
    bundle_sent: bool = False
    bytes_to_lab: int = 0
    bytes_from_lab: int = 0
    reply_s: float | None = None
    reply: MapReply | None = None  # the accepted reply, decoded
    in_secure_sum: bool = False

    @property
    def adapter(self) -> Adapter | None:
        """The accepted adapter, if the lab released one."""
        return None if self.reply is None else self.reply.adapter

    @property
    def label_statistics(self) -> LabelStatistics | None:
        """The accepted label statistics, if the lab released them."""
        return None if self.reply is None else self.reply.label_statistics

    @property
    def composition(self) -> Composition | None:
        """How the accepted lab's policy releases composition."""
        return None if self.reply is None else self.reply.lab.composition

    def to_dict(self) -> dict[str, Any]:
        """The lab's row of ``report.json``."""
        accepted = {
            "n_epochs": None,
            "composition": "",
            "ledger_head": "",
            "ledger_seq": None,
            "timings": {},
            "adapter": None,
            "label_statistics": None,
        }
        return {
            "name": self.name,
            "node_id": self.node_id,
            "status": self.status,
            "reason": self.reason,
            "bundle_sent": self.bundle_sent,
            "bytes_to_lab": self.bytes_to_lab,
            "bytes_from_lab": self.bytes_from_lab,
            "reply_s": None if self.reply_s is None else round(self.reply_s, 2),
            **(accepted if self.reply is None else self.reply.summary()),
            "in_secure_sum": self.in_secure_sum,
        }


@dataclass
class RoundResult:
    """Everything the report needs."""

    settings: RoundSettings
    bundle: ReferenceBundle
    labs: list[LabOutcome]
    started: str
    phases: dict[str, float] = field(default_factory=dict)
    atlas: ReferenceBundle | None = None
    status: str = "running"
    message: str = ""
    consortium_categories: list[str] = field(default_factory=list)
    consortium_counts: SecureSumResult | None = None


def run_round(grid: Grid, settings: RoundSettings, context: Context) -> RoundResult:
    """Run one round; always returns a result (the caller writes the report), never raises for a lab's failure."""
    from fedarches.server.merge import merge_adapters

    coord = CoordinatorDir.open(settings.coordinator_dir)
    bundle = ReferenceBundle.open(settings.bundle_dir, coord.signing_public_key)
    labs = {
        name: LabOutcome(name=name, node_id=int(info.get("node-id", 0)))
        for name, info in coord.labs().items()
        if info.get("registered")
    }
    result = RoundResult(settings, bundle, list(labs.values()), started=datetime.now(UTC).isoformat(timespec="seconds"))
    by_node = {lab.node_id: lab for lab in labs.values()}
    log.info(
        "round %s: bundle %s, %d registered labs: %s", settings.round_id, bundle.bundle_id, len(labs), ", ".join(labs)
    )

    tick = time.perf_counter()  # what replies are checked against; surgery's shape probe fails before any lab works
    expected = Expected.for_bundle(bundle, min_count=settings.min_count, max_adapter_bytes=settings.max_adapter_bytes)
    result.phases["surgery_probe_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    online = _wait_for_nodes(grid, set(by_node), settings.wait_for_labs)
    result.phases["wait_for_labs_s"] = time.perf_counter() - tick
    for node_id in online - set(by_node):
        log.warning("node %d is online but not a registered lab; it is left out", node_id)
    participants = sorted((by_node[n] for n in online & set(by_node)), key=lambda lab: lab.name)
    for lab in labs.values():
        if lab.node_id not in online:
            lab.reason = "SuperNode not online when the round started"
    log.info("%d of %d labs online: %s", len(participants), len(labs), ", ".join(p.name for p in participants))

    tick = time.perf_counter()
    held = {lab.name: [str(b) for b in coord.lab(lab.name).get("bundles", [])] for lab in participants}
    replies = _train_labs(grid, participants, held, bundle, settings, deadline=time.monotonic() + settings.timeout)
    result.phases["train_s"] = time.perf_counter() - tick
    for lab in participants:
        _validate(lab, replies.get(lab.name), expected, settings)

    accepted = [lab for lab in participants if lab.status == "accepted"]
    summing = [lab for lab in accepted if lab.composition == Composition.SECURE_SUM]
    if summing:
        tick = time.perf_counter()
        result.consortium_categories = [*bundle.label_categories, UNKNOWN_LABEL]
        log.info("secure sum (SecAgg+) of label counts over %s", ", ".join(lab.name for lab in summing))
        try:
            result.consortium_counts = secure_sum(
                grid,
                context,
                [lab.node_id for lab in summing],
                round_id=settings.round_id,
                categories=result.consortium_categories,
                timeout=settings.secure_sum_timeout,
            )
        except Exception as err:  # the adapters are still merged; the report says why there is no sum
            log.exception("secure sum failed")
            result.consortium_counts = SecureSumResult(None, message=f"SecAgg+ failed: {type(err).__name__}")
        for lab in summing:
            lab.in_secure_sum = lab.node_id in result.consortium_counts.contributors
        _write_secure_sum(settings.round_dir, result, summing)
        result.phases["secure_sum_s"] = time.perf_counter() - tick
        outcome = result.consortium_counts
        log.info(
            "secure sum: %s",
            f"total over {len(outcome.contributors)} labs" if outcome.total is not None else outcome.message,
        )
    for lab in accepted:  # it verified and used this bundle: later rounds send only the id
        if bundle.bundle_id not in held[lab.name]:
            coord.update_lab(lab.name, bundles=[*held[lab.name], bundle.bundle_id][-5:])
    adapters = [(lab.name, lab.adapter) for lab in accepted if lab.adapter is not None]
    if len(accepted) < settings.min_labs or not accepted:
        result.status = "failed"
        result.message = f"{len(accepted)} labs accepted, fewer than --min-labs {settings.min_labs}; no atlas written"
    elif not adapters:
        result.status = "failed"
        result.message = f"{len(accepted)} labs accepted, but none released an adapter; no atlas written"
    else:
        tick = time.perf_counter()
        result.atlas = merge_adapters(
            bundle,
            adapters,
            settings.round_dir / "atlas",
            coord.signing_key,
            round_id=settings.round_id,
        )
        result.phases["merge_s"] = time.perf_counter() - tick
        result.status = "completed"
        result.message = f"merged {len(accepted)} labs into atlas {result.atlas.bundle_id}"
    log.info("round %s %s: %s", settings.round_id, result.status, result.message)
    return result


def _write_secure_sum(round_dir: Path, result: RoundResult, asked: list[LabOutcome]) -> None:
    """The coordinator's own copy of the secure sum (unsuppressed: it is what SecAgg+ revealed to it)."""
    outcome = result.consortium_counts
    assert outcome is not None
    data = {
        "categories": result.consortium_categories,
        "layout": "cells per type, then low-confidence cells per type",
        "asked": [lab.name for lab in asked],
        "contributors": [lab.name for lab in asked if lab.in_secure_sum],
        "total": None if outcome.total is None else [int(v) for v in outcome.total],
        "message": outcome.message,
    }
    atomic_write_bytes(Path(round_dir) / "secure_sum.json", json.dumps(data, indent=2).encode())


def _wait_for_nodes(grid: Grid, expected: set[int], wait_s: float) -> set[int]:
    deadline = time.monotonic() + wait_s
    while True:
        online = set(grid.get_node_ids())
        if expected <= online or time.monotonic() >= deadline:
            return online
        time.sleep(POLL_S)


def _train_labs(
    grid: Grid,
    labs: list[LabOutcome],
    held: dict[str, list[str]],
    bundle: ReferenceBundle,
    settings: RoundSettings,
    *,
    deadline: float,
) -> dict[str, Message]:
    """Send ``train`` to every lab, with the bundle only where the coordinator has no record of it.

    A lab that answers that it lacks the bundle (or that its copy fails verification) gets it
    resent once, within the same deadline.
    """
    start = time.monotonic()
    first = _send_train(
        grid,
        labs,
        {lab.name: bundle.bundle_id not in held[lab.name] for lab in labs},
        bundle,
        settings,
        start,
        deadline,
    )
    resend = [lab for lab in labs if not lab.bundle_sent and _lacks_bundle(first.get(lab.name))]
    if resend:
        log.info("resending bundle %s to %s", bundle.bundle_id, ", ".join(lab.name for lab in resend))
        first.update(
            _send_train(
                grid, resend, dict.fromkeys((lab.name for lab in resend), True), bundle, settings, start, deadline
            )
        )
    return first


def _send_train(
    grid: Grid,
    labs: list[LabOutcome],
    with_bundle: dict[str, bool],
    bundle: ReferenceBundle,
    settings: RoundSettings,
    start: float,
    deadline: float,
) -> dict[str, Message]:
    bundle_record = None
    request = settings.map_request(bundle.bundle_id).to_record()
    messages = []
    for lab in labs:
        content = RecordDict({protocol.ROUND: request})
        if with_bundle[lab.name]:
            if bundle_record is None:
                bundle_record = protocol.BundleTransfer(bundle.verified_files()).to_record()
            content[protocol.BUNDLE] = bundle_record
            lab.bundle_sent = True
        message = Message(content, dst_node_id=lab.node_id, message_type=protocol.MAP)
        size = message_bytes(message)
        lab.bytes_to_lab += size
        lab.status = "running"
        messages.append(message)
        log.info(
            "-> %s: train (%s, %d bytes)",
            lab.name,
            "with bundle" if with_bundle[lab.name] else f"bundle {bundle.bundle_id} held since an earlier round",
            size,
        )
    by_node = {lab.node_id: lab for lab in labs}
    replies = exchange(
        grid, messages, max(0.0, deadline - time.monotonic()), on_reply=lambda n, r: _log_arrival(by_node[n], r, start)
    )
    return {lab.name: replies[lab.node_id] for lab in labs if lab.node_id in replies}


def _lacks_bundle(reply: Message | None) -> bool:
    """Whether a lab's error says its copy of the bundle is missing or fails verification."""
    codes = {
        protocol.LAB_ERROR_CODE_BASE + BundleError.exit_code,
        protocol.LAB_ERROR_CODE_BASE + BundleIntegrityError.exit_code,
    }
    try:
        return reply is not None and reply.has_error() and reply.error.code in codes
    except Exception:  # noqa: BLE001 - an unreadable reply is judged (rejected) later, not resent to
        return False


def _log_arrival(lab: LabOutcome, reply: Message, start: float) -> None:
    """Log a reply as it arrives; never raises (it runs inside the exchange, for every lab)."""
    lab.reply_s = time.monotonic() - start
    try:
        if reply.has_error():
            log.warning("<- %s: error after %.1f s (%s)", lab.name, lab.reply_s, _peer_text(reply.error.reason))
        else:
            log.info("<- %s: reply after %.1f s (%d bytes)", lab.name, lab.reply_s, reply_bytes(reply))
    except Exception as err:  # noqa: BLE001 - a malformed reply is rejected when validated
        log.warning("<- %s: unreadable reply after %.1f s (%s)", lab.name, lab.reply_s, type(err).__name__)


def _validate(lab: LabOutcome, reply: Message | None, expected: Expected, settings: RoundSettings) -> None:
    """Accept or reject one lab's reply, recording why. Never raises: a reply that breaks anything is rejected."""
    if reply is None:
        lab.status = "timed-out"
        lab.reason = f"no reply within --timeout {settings.timeout:.0f} s"
        return
    try:
        if reply.has_error():
            offline = reply.error.code in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
            lab.status = "dropped" if offline else "failed"
            lab.reason = (
                "SuperNode went offline during the round"
                if offline
                else f"lab reported an error: {_peer_text(reply.error.reason)}"
            )
            return
        lab.bytes_from_lab = reply_bytes(reply)
        if reply.metadata.src_node_id != lab.node_id:
            _reject(lab, f"reply came from node {reply.metadata.src_node_id}, not the lab's")
            return
        plain = PlainContent.from_content(reply.content)
    except Exception as err:  # noqa: BLE001 - whatever fails to decode is this lab's rejection
        _reject(lab, f"malformed reply: {type(err).__name__}: {_peer_text(err)}")
        return
    verdict = validate_reply(plain, expected, lab=lab.name)
    if not isinstance(verdict, Accepted):
        _reject(lab, verdict.reason)
        return
    lab.reply = verdict.reply
    lab.status, lab.reason = "accepted", ""


def _reject(lab: LabOutcome, reason: str) -> None:
    lab.status, lab.reason = "rejected", reason
    log.warning("rejected %s: %s", lab.name, reason)


def reply_bytes(reply: Message) -> int:
    """:func:`message_bytes` of a lab's reply, or 0 when it cannot be serialized again."""
    try:
        return message_bytes(reply)
    except Exception:  # noqa: BLE001 - its size is only reported; a malformed reply is rejected on its content
        return 0


def _peer_text(value: object, limit: int = 300) -> str:
    """Text a peer sent (an error reason), as one printable line of at most ``limit`` characters."""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a value whose text fails is named by its type
        text = f"<{type(value).__name__}>"
    flat = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def message_bytes(message: Message) -> int:
    """Serialized size of a message and every object it carries (what Flower pushes, before HTTP framing)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
