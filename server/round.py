"""One mapping round as a Flower :class:`~flwr.serverapp.strategy.Strategy`, driven by Flower's own loop.

:func:`run_round` hands :class:`MappingRound` to ``Strategy.start`` for one server round:
``configure_train`` does steps 1-2, Flower sends and collects (step 3), ``aggregate_train`` does
steps 4-6. What a reply means is judged in the Flower-free :mod:`fedarches.server.validation`,
the atlas is merged in :mod:`fedarches.server.merge`, and SecAgg+'s legacy plumbing stays in
:mod:`fedarches.server.secure_sum`.

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
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedarches.server.coordinator import CoordinatorDir
from fedarches.server.messaging import POLL_S, PollingGrid
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
from fedarches.shared.wire import PlainContent, one_line

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


def _start_probe(
    bundle: ReferenceBundle, settings: RoundSettings, phases: dict[str, float], probes_dir: Path
) -> Future[Expected]:
    """Work out, in a thread, what a lab's reply must look like for ``bundle`` (its seconds go to ``phases``).

    Surgery's shape probe runs once per bundle and coordinator: its finding is kept in
    ``probes_dir/BUNDLE_ID.json`` (the bundle is signed and its id is its content's hash).
    """
    kept = probes_dir / f"{bundle.bundle_id}.json"

    def probe() -> Expected:
        tick = time.perf_counter()
        try:
            limit, grown = settings.max_adapter_bytes, _read_probe(kept)
            expected = Expected.for_bundle(bundle, min_count=settings.min_count, max_adapter_bytes=limit, grown=grown)
            if grown is None:
                atomic_write_bytes(kept, json.dumps(dict(expected.grown), sort_keys=True).encode())
            else:  # no probe, so nothing imported torch yet: do it now, while the labs map, not in the merge
                import torch  # noqa: F401

                from fedarches.server import merge  # noqa: F401
            return expected
        finally:
            phases["surgery_probe_s"] = time.perf_counter() - tick

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedarches-probe")
    future = pool.submit(probe)
    pool.shutdown(wait=False)  # the probe runs on; the round waits for it only when judging replies
    return future


def _read_probe(path: Path) -> dict[str, int] | None:
    """A kept probe finding (tensor name: axis), or None when there is none or it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data:
        return None
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()):
        return None
    return data


def run_round(grid: Grid, settings: RoundSettings, context: Context) -> RoundResult:
    """Run one round through Flower's strategy loop; always returns a result, never raises for a lab's failure."""
    strategy = MappingRound(settings, context)
    polling = PollingGrid(grid, on_reply=strategy.on_reply)
    strategy.start(polling, ArrayRecord(), num_rounds=1, timeout=settings.timeout)
    return strategy.result


class MappingRound(Strategy):
    """The coordinator's round: the bundle out where it is missing, labs' adapters in, one merged atlas.

    Parameters
    ----------
    settings
        The round's settings (:class:`~fedarches.server.settings.RoundSettings`).
    context
        The ServerApp's Flower context (the secure sum's legacy workflow needs it).
    """

    def __init__(self, settings: RoundSettings, context: Context) -> None:
        self.settings = settings
        self.context = context
        self.coord = CoordinatorDir.open(settings.coordinator_dir)
        bundle = ReferenceBundle.open(settings.bundle_dir, self.coord.signing_public_key)
        labs = [
            LabOutcome(name=name, node_id=int(info.get("node-id", 0)))
            for name, info in self.coord.labs().items()
            if info.get("registered")
        ]
        started = datetime.now(UTC).isoformat(timespec="seconds")
        self.result = RoundResult(settings, bundle, labs, started=started)
        self.participants: list[LabOutcome] = []
        self.held: dict[str, list[str]] = {}
        self._by_node = {lab.node_id: lab for lab in labs}
        self._expected: Expected | None = None
        self._probe: Future[Expected] | None = None
        self._grid: Grid | None = None
        self._sent: list[tuple[Message, LabOutcome]] = []
        self._sent_at = 0.0
        self._deadline = 0.0

    def summary(self) -> None:
        """Log what the round will do."""
        bundle, labs = self.result.bundle, self.result.labs
        log.info(
            "round %s: bundle %s, %d registered labs: %s",
            self.settings.round_id,
            bundle.bundle_id,
            len(labs),
            ", ".join(lab.name for lab in labs),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Wait for the labs, then one ``train.map`` message per online lab; the bundle only where it is missing."""
        settings, result, bundle = self.settings, self.result, self.result.bundle
        self._grid = grid
        # What replies are checked against. Surgery's shape probe imports scvi-tools (~5 s): it runs
        # while the labs map, and a bundle it fails on fails the round when the replies are judged.
        self._probe = _start_probe(bundle, settings, result.phases, self.coord.probes_dir)

        tick = time.perf_counter()
        online = _wait_for_nodes(grid, set(self._by_node), settings.wait_for_labs)
        result.phases["wait_for_labs_s"] = time.perf_counter() - tick
        for node_id in online - set(self._by_node):
            log.warning("node %d is online but not a registered lab; it is left out", node_id)
        self.participants = sorted((self._by_node[n] for n in online & set(self._by_node)), key=lambda lab: lab.name)
        for lab in result.labs:
            if lab.node_id not in online:
                lab.reason = "SuperNode not online when the round started"
        names = ", ".join(p.name for p in self.participants)
        log.info("%d of %d labs online: %s", len(self.participants), len(result.labs), names)
        self.held = {lab.name: _held_bundles(self.coord, lab.name) for lab in self.participants}
        self._sent_at = time.monotonic()
        self._deadline = self._sent_at + settings.timeout
        with_bundle = {lab.name: bundle.bundle_id not in self.held[lab.name] for lab in self.participants}
        messages = _train_messages(self.participants, with_bundle, bundle, settings)
        self._sent = list(zip(messages, self.participants, strict=True))
        return messages

    def on_reply(self, node_id: int, reply: Message) -> None:
        """Log a reply as it arrives and note when; never raises."""
        lab = self._by_node.get(node_id)
        if lab is not None:
            _log_arrival(lab, reply, self._sent_at)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge every reply, resend the bundle to labs that lost it, sum composition securely, merge the atlas."""
        settings, result, bundle = self.settings, self.result, self.result.bundle
        assert self._grid is not None and self._probe is not None
        self._expected = self._probe.result()  # re-raises what the probe raised
        by_name = _replies_by_lab(replies, self._sent)
        resend = [lab for lab in self.participants if not lab.bundle_sent and _lacks_bundle(by_name.get(lab.name))]
        if resend:
            log.info("resending bundle %s to %s", bundle.bundle_id, ", ".join(lab.name for lab in resend))
            messages = _train_messages(resend, dict.fromkeys((lab.name for lab in resend), True), bundle, settings)
            again = self._grid.send_and_receive(messages, timeout=max(0.0, self._deadline - time.monotonic()))
            by_name.update(_replies_by_lab(again, list(zip(messages, resend, strict=True))))
        result.phases["train_s"] = time.monotonic() - self._sent_at
        for lab in self.participants:
            _validate(lab, by_name.get(lab.name), self._expected, settings)
        accepted = [lab for lab in self.participants if lab.status == "accepted"]
        self._secure_sum([lab for lab in accepted if lab.composition == Composition.SECURE_SUM])
        for lab in accepted:  # it verified and used this bundle: later rounds send only the id
            if bundle.bundle_id not in self.held[lab.name]:
                self.coord.update_lab(lab.name, bundles=[*self.held[lab.name], bundle.bundle_id][-5:])
        self._merge(accepted)
        log.info("round %s %s: %s", settings.round_id, result.status, result.message)
        return None, MetricRecord({"accepted": len(accepted), "participants": len(self.participants)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: each lab scores its own cells locally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (no evaluation messages are sent)."""
        return None

    def _secure_sum(self, summing: list[LabOutcome]) -> None:
        """The consortium's label counts over ``summing`` through SecAgg+; the coordinator learns only the total."""
        if not summing:
            return
        settings, result = self.settings, self.result
        assert self._grid is not None
        tick = time.perf_counter()
        result.consortium_categories = [*result.bundle.label_categories, UNKNOWN_LABEL]
        log.info("secure sum (SecAgg+) of label counts over %s", ", ".join(lab.name for lab in summing))
        try:
            result.consortium_counts = secure_sum(
                self._grid,
                self.context,
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
        what = f"total over {len(outcome.contributors)} labs" if outcome.total is not None else outcome.message
        log.info("secure sum: %s", what)

    def _merge(self, accepted: list[LabOutcome]) -> None:
        """Merge the accepted adapters into a new signed atlas, when enough labs were accepted."""
        from fedarches.server.merge import merge_adapters

        settings, result, n = self.settings, self.result, len(accepted)
        adapters = [(lab.name, lab.adapter) for lab in accepted if lab.adapter is not None]
        if n < settings.min_labs or not accepted:
            result.status = "failed"
            result.message = f"{n} labs accepted, fewer than --min-labs {settings.min_labs}; no atlas written"
        elif not adapters:
            result.status = "failed"
            result.message = f"{n} labs accepted, but none released an adapter; no atlas written"
        else:
            tick = time.perf_counter()
            atlas_dir = settings.round_dir / "atlas"
            new_types = [(lab.name, lab.reply.new_types) for lab in accepted if lab.reply and lab.reply.new_types]
            result.atlas = merge_adapters(
                result.bundle, adapters, atlas_dir, self.coord.signing_key, round_id=settings.round_id,
                new_types=new_types,
            )  # fmt: skip
            result.phases["merge_s"] = time.perf_counter() - tick
            result.status = "completed"
            result.message = f"merged {n} labs into atlas {result.atlas.bundle_id}"
            learned = [t for t in result.atlas.label_categories if t not in result.bundle.label_categories]
            if learned:
                result.message += f"; it learned cell types {learned} from labs' prototypes"


def _held_bundles(coord: CoordinatorDir, name: str) -> list[str]:
    """Ids of the bundles the registry records lab ``name`` as holding."""
    return [str(b) for b in coord.lab(name).get("bundles", [])]


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


def _train_messages(
    labs: list[LabOutcome], with_bundle: dict[str, bool], bundle: ReferenceBundle, settings: RoundSettings
) -> list[Message]:
    """One ``train.map`` message per lab: the round's settings, and the bundle where ``with_bundle`` says so."""
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
    return messages


def _replies_by_lab(replies: Iterable[Message], sent: list[tuple[Message, LabOutcome]]) -> dict[str, Message]:
    """The replies keyed by the lab each message was sent to (through the id it replies to, set when pushed).

    Who actually sent a reply is checked when it is judged (:func:`_validate`).
    """
    lab_of = {message.metadata.message_id: lab.name for message, lab in sent}
    out = {}
    for reply in replies:
        try:
            name = lab_of.get(reply.metadata.reply_to_message_id)
        except Exception:  # noqa: BLE001 - a reply without readable metadata answers for no lab
            continue
        if name is not None:
            out[name] = reply
    return out


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
            log.warning("<- %s: error after %.1f s (%s)", lab.name, lab.reply_s, one_line(reply.error.reason))
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
                else f"lab reported an error: {one_line(reply.error.reason)}"
            )
            return
        lab.bytes_from_lab = reply_bytes(reply)
        if reply.metadata.src_node_id != lab.node_id:
            _reject(lab, f"reply came from node {reply.metadata.src_node_id}, not the lab's")
            return
        plain = PlainContent.from_content(reply.content)
    except Exception as err:  # noqa: BLE001 - whatever fails to decode is this lab's rejection
        _reject(lab, f"malformed reply: {type(err).__name__}: {one_line(err)}")
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


def message_bytes(message: Message) -> int:
    """Serialized size of a message and every object it carries (what Flower pushes, before HTTP framing)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
