"""The coordinator's validation of lab replies, rule by rule, on hand-built replies.

Replies are built with the real protocol functions (as a lab builds them) and turned into the
plain form with the coordinator's own converter; each test then breaks one rule.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedarches.server import validation
from fedarches.server.round import LabOutcome, _log_arrival, _validate
from fedarches.server.settings import RoundSettings
from fedarches.server.validation import Accepted, Expected, Rejected, validate_reply
from fedarches.shared import protocol
from fedarches.shared.adapters import MAX_ABS_VALUE, Adapter, TensorSlice
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.labels import LabelStatistics, compute_label_statistics
from fedarches.shared.wire import PlainContent

LAB = "lab_a"
BUNDLE_ID = "0123456789abcdef"
REFERENCE = {"enc.w": (4, 6), "dec.w": (3, 5), "dec.b": (3,), "bn.mean": (4,)}
GROWN = {"enc.w": 1, "dec.w": 1}
HEAD = "ab" * 32
LAB_KEYS = protocol.MapReply.RECORDS[protocol.LAB].keys
EXPECTED = Expected(
    bundle_id=BUNDLE_ID,
    reference_shapes=REFERENCE,
    grown=GROWN,
    label_categories=("T", "B", "NK"),
    reference_batches=("ref1", "ref2"),
    min_count=11,
    max_adapter_bytes=4096,
)


def make_adapter(batches: tuple[str, ...] = (LAB,)) -> Adapter:
    rng = np.random.default_rng(0)
    n = len(batches)
    return Adapter(
        BUNDLE_ID,
        batches,
        {
            "enc.w": TensorSlice(rng.normal(size=(4, n)).astype(np.float32), axis=1, offset=6),
            "dec.w": TensorSlice(rng.normal(size=(3, n)).astype(np.float32), axis=1, offset=5),
        },
    )


def make_stats(privacy: dict[str, Any] | None = None) -> LabelStatistics:
    predicted = ["T"] * 20 + ["B"] * 3 + ["NK"] * 12 + ["Unknown"] * 11
    stats = compute_label_statistics(
        predicted, np.full(46, 0.8), np.zeros(46, bool), ["T", "B", "NK", "Unknown"], min_count=11
    )
    return replace(stats, privacy=privacy)


def make_content(
    adapter: Adapter | None = None, stats: LabelStatistics | None = None, composition: str = "plain", **lab: Any
) -> RecordDict:
    """A reply as a lab builds it (:class:`~fedarches.shared.protocol.MapReply`), with ``lab`` record overrides."""
    info = protocol.LabInfo(LAB, "0.1.0", 3, protocol.Composition.PLAIN)
    label_statistics = (stats or make_stats()) if composition == "plain" else None
    content = protocol.MapReply(info, {"train_s": 1.5, "total_s": 2.0}, adapter or make_adapter(), label_statistics)
    content = content.to_content()
    for key, value in {"composition": composition, **lab}.items():
        content[protocol.LAB][key] = value
    return content


def reply(mutate: Callable[[dict[str, dict[str, Any]]], None] | None = None, **kwargs: Any) -> PlainContent:
    """The plain form of a valid reply, with ``mutate`` applied to {"configs"|"arrays"|"metrics": records}."""
    plain = PlainContent.from_content(make_content(**kwargs))
    parts = {
        "configs": copy.deepcopy(dict(plain.configs)),
        "arrays": copy.deepcopy(dict(plain.arrays)),
        "metrics": copy.deepcopy(dict(plain.metrics)),
    }
    if mutate is not None:
        mutate(parts)
    return PlainContent(**parts)


def reason(plain: Any, expected: Any = EXPECTED, lab: Any = LAB) -> str:
    verdict = validate_reply(plain, expected, lab=lab)
    assert isinstance(verdict, Rejected), f"accepted: {verdict}"
    return verdict.reason


# -- mutations --------------------------------------------------------------------------------------------------------


def meta(key: str, value: Any) -> Callable[[dict], None]:
    return lambda p: p["configs"][protocol.ADAPTER_META].__setitem__(key, value)


def slices(change: Callable[[dict], Any]) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        record = p["configs"][protocol.ADAPTER_META]
        data = json.loads(record["slices"])
        out = change(data)
        record["slices"] = out if isinstance(out, str) else json.dumps(data)

    return mutate


def tensor(name: str, value: Any) -> Callable[[dict], None]:
    return lambda p: p["arrays"][protocol.ADAPTER].__setitem__(name, value)


def lab_field(key: str, value: Any) -> Callable[[dict], None]:
    return lambda p: p["configs"][protocol.LAB].__setitem__(key, value)


def stats_json(change: Callable[[dict], Any]) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        record = p["configs"][protocol.LABEL_STATS]
        data = json.loads(record["json"])
        out = change(data)
        record["json"] = out if isinstance(out, str) else json.dumps(data)

    return mutate


def first_type(key: str, value: Any) -> Callable[[dict], None]:
    return stats_json(lambda d: d["types"][0].__setitem__(key, value))


def add_dec_b(p: dict) -> None:  # an adapter column for a tensor that surgery never grows
    p["arrays"][protocol.ADAPTER]["dec.b"] = np.zeros((1,), np.float32)
    slices(lambda d: d.__setitem__("dec.b", {"axis": 0, "offset": 3}))(p)


def drop_dec_w(p: dict) -> None:
    del p["arrays"][protocol.ADAPTER]["dec.w"]
    slices(lambda d: d.pop("dec.w"))(p)


def add_unknown_tensor(p: dict) -> None:
    p["arrays"][protocol.ADAPTER]["evil.w"] = np.zeros((2, 1), np.float32)
    slices(lambda d: d.__setitem__("evil.w", {"axis": 1, "offset": 2}))(p)


def along_axis_0(p: dict) -> None:  # enc.w's new part placed as a new row: the right offset for axis 0, wrong axis
    p["arrays"][protocol.ADAPTER]["enc.w"] = np.zeros((1, 6), np.float32)
    slices(lambda d: d.__setitem__("enc.w", {"axis": 0, "offset": 4}))(p)


def duplicated_slice(p: dict) -> None:  # the same tensor twice in the slices JSON: the second would win silently
    text = p["configs"][protocol.ADAPTER_META]["slices"]
    p["configs"][protocol.ADAPTER_META]["slices"] = text[:-1] + ', "enc.w": {"axis": 1, "offset": 6}}'


ADAPTER_CASES = [
    pytest.param(drop_dec_w, "lacks 1 tensors that surgery grows", id="grown-tensor-missing"),
    pytest.param(add_dec_b, "surgery never grows", id="non-growing-tensor"),
    pytest.param(add_unknown_tensor, "not a tensor of the reference", id="unknown-tensor"),
    pytest.param(duplicated_slice, "repeats the key", id="tensor-twice"),
    pytest.param(along_axis_0, "surgery grows it along axis 1", id="wrong-axis"),
    pytest.param(slices(lambda d: d["enc.w"].__setitem__("offset", 5)), "do not fit", id="wrong-offset"),
    pytest.param(slices(lambda d: d["enc.w"].__setitem__("axis", True)), "non-negative integers", id="bool-axis"),
    pytest.param(slices(lambda d: d["enc.w"].__setitem__("axis", 1.0)), "non-negative integers", id="float-axis"),
    pytest.param(slices(lambda d: d["enc.w"].__setitem__("extra", 1)), "exactly 'axis' and 'offset'", id="slice-key"),
    pytest.param(slices(lambda d: '["enc.w", "dec.w"]'), "must be a mapping", id="slices-a-list"),
    pytest.param(slices(lambda d: "[" * 100_000), "nested too deeply", id="slices-nested"),
    pytest.param(slices(lambda d: '{"enc.w": NaN}'), "not JSON", id="slices-nan"),
    pytest.param(meta("slices", 7), "must be JSON text", id="slices-not-text"),
    pytest.param(tensor("enc.w", np.zeros((4, 2), np.float32)), "expected (4, 1)", id="two-columns-one-batch"),
    pytest.param(tensor("enc.w", np.zeros((4,), np.float32)), "expected (4, 1)", id="wrong-rank"),
    pytest.param(tensor("enc.w", np.zeros((4, 1), np.int32)), "non-float", id="integers"),
    pytest.param(tensor("enc.w", np.zeros((4, 1), np.complex64)), "non-float", id="complex"),
    pytest.param(tensor("enc.w", np.full((4, 1), np.nan, np.float32)), "non-finite", id="nan"),
    pytest.param(tensor("enc.w", np.full((4, 1), -np.inf, np.float32)), "non-finite", id="inf"),
    pytest.param(tensor("enc.w", np.full((4, 1), MAX_ABS_VALUE * 2, np.float32)), "magnitude", id="huge"),
    pytest.param(tensor("enc.w", [[0.0]] * 4), "not an array", id="a-list"),
    pytest.param(lambda p: p["configs"].pop(protocol.ADAPTER_META), "without its counterpart", id="no-meta"),
    pytest.param(lambda p: p["arrays"].pop(protocol.ADAPTER), "without its counterpart", id="no-arrays"),
    pytest.param(meta("bundle-id", "fedcba9876543210"), "made against bundle", id="other-bundle"),
    pytest.param(meta("format", "npz"), "not a fedarches adapter", id="format"),
    pytest.param(lambda p: p["configs"][protocol.ADAPTER_META].pop("format"), "exactly", id="meta-key-missing"),
    pytest.param(meta("batch-categories", "lab_a"), "list of strings", id="batches-a-string"),
    pytest.param(meta("batch-categories", []), "no new batch", id="no-batch"),
    pytest.param(meta("batch-categories", ["lab_b"]), "outside the lab's namespace", id="foreign-batch"),
    pytest.param(meta("batch-categories", ["lab_ab"]), "outside the lab's namespace", id="prefix-trick"),
    pytest.param(meta("batch-categories", [""]), "non-empty string", id="empty-batch"),
    pytest.param(meta("batch-categories", [3]), "list of strings", id="int-batch"),
    pytest.param(meta("batch-categories", ["lab_a/\x1b[2J"]), "not printable", id="control-chars"),
    pytest.param(meta("batch-categories", ["lab_a/" + "x" * 300]), "longer than", id="long-batch"),
]


@pytest.mark.parametrize(("mutate", "message"), ADAPTER_CASES)
def test_a_malformed_adapter_is_rejected_with_its_reason(mutate: Callable[[dict], None], message: str) -> None:
    assert message in reason(reply(mutate))


def test_batch_names_must_be_distinct_and_new_and_few() -> None:
    twice = reply(adapter=make_adapter(("lab_a/x", "lab_a/x")))
    assert "more than once" in reason(twice)
    clash = replace(EXPECTED, reference_batches=("ref1", "lab_a"))  # the atlas holds lab_a from an earlier round
    assert "already holds" in reason(reply(), clash)
    many = tuple(f"lab_a/{i}" for i in range(validation.MAX_BATCHES + 1))
    big = replace(EXPECTED, max_adapter_bytes=10**9)
    assert "more than" in reason(reply(adapter=make_adapter(many)), big)


def test_adapter_size_limit() -> None:
    batches = tuple(f"lab_a/{i}" for i in range(200))  # (4 + 3) * 200 float32 = 5600 bytes > 4096
    assert "over the limit of 4096" in reason(reply(adapter=make_adapter(batches)))
    accepted = validate_reply(reply(adapter=make_adapter(batches)), replace(EXPECTED, max_adapter_bytes=5600), lab=LAB)
    assert isinstance(accepted, Accepted)


def test_a_valid_reply_is_accepted_with_everything_it_carries() -> None:
    verdict = validate_reply(reply(**{"ledger-head": HEAD, "ledger-seq": 4}), EXPECTED, lab=LAB)
    assert isinstance(verdict, Accepted)
    decoded = verdict.reply
    assert decoded.adapter is not None and decoded.adapter.batch_categories == (LAB,)
    assert set(decoded.adapter.tensors) == set(GROWN)
    assert decoded.label_statistics == make_stats()
    assert (decoded.lab.composition, decoded.lab.n_epochs, decoded.lab.fedarches_version) == ("plain", 3, "0.1.0")
    assert decoded.timings == {"train_s": 1.5, "total_s": 2.0}
    assert (decoded.lab.ledger_head, decoded.lab.ledger_seq) == (HEAD, 4)
    without_anchor = validate_reply(reply(), EXPECTED, lab=LAB)  # labs before the ledger anchor send none
    assert isinstance(without_anchor, Accepted)
    assert (without_anchor.reply.lab.ledger_head, without_anchor.reply.lab.ledger_seq) == ("", None)


def test_several_batches_and_no_adapter_are_fine() -> None:
    several = validate_reply(reply(adapter=make_adapter(("lab_a/p1", "lab_a/p2", "lab_a"))), EXPECTED, lab=LAB)
    assert isinstance(several, Accepted) and several.reply.adapter is not None
    kept_in = reply(lambda p: (p["arrays"].pop(protocol.ADAPTER), p["configs"].pop(protocol.ADAPTER_META)))
    verdict = validate_reply(kept_in, EXPECTED, lab=LAB)
    assert isinstance(verdict, Accepted) and verdict.reply.adapter is None


LABEL_CASES = [
    pytest.param(first_type("cell_type", "Macrophage"), "does not have", id="foreign-type"),
    pytest.param(stats_json(lambda d: d["types"].append(dict(d["types"][0]))), "more than once", id="type-twice"),
    pytest.param(first_type("n_cells", True), "non-negative integer", id="bool-count"),
    pytest.param(first_type("n_cells", 20.0), "non-negative integer", id="float-count"),
    pytest.param(first_type("n_cells", -20), "non-negative integer", id="negative-count"),
    pytest.param(first_type("n_cells", "20"), "non-negative integer", id="string-count"),
    pytest.param(first_type("n_cells", None), "non-negative integer", id="null-count"),
    pytest.param(first_type("n_cells", 10**12), "over 1,000,000,000", id="huge-count"),
    pytest.param(first_type("n_low_confidence", 25), "25 low-confidence cells out of 20", id="low-over-cells"),
    pytest.param(first_type("n_low_confidence", 5), "below k=11", id="low-below-k"),
    pytest.param(first_type("mean_confidence", 1.5), "[0, 1]", id="confidence-over-1"),
    pytest.param(first_type("mean_confidence", True), "[0, 1]", id="bool-confidence"),
    pytest.param(stats_json(lambda d: json.dumps(d).replace("0.8", "NaN", 1)), "not JSON", id="nan-confidence"),
    pytest.param(stats_json(lambda d: json.dumps(d).replace("0.8", "1e999", 1)), "non-finite", id="inf-confidence"),
    pytest.param(stats_json(lambda d: d.__setitem__("min_count", 2)), "suppressed below", id="lower-k"),
    pytest.param(stats_json(lambda d: d.__setitem__("min_count", False)), "positive integer", id="bool-k"),
    pytest.param(stats_json(lambda d: json.dumps(d).replace('"suppressed"', "3", 1)), "below k", id="leaks-3"),
    pytest.param(stats_json(lambda d: d.__setitem__("n_cells", 46)), "unexpected", id="extra-key"),
    pytest.param(stats_json(lambda d: d.pop("types")), "lack ['types']", id="no-types"),
    pytest.param(stats_json(lambda d: "[1, 2]"), "must be a JSON object", id="a-list"),
    pytest.param(stats_json(lambda d: d.__setitem__("types", [1])), "must be an object", id="type-not-object"),
    pytest.param(stats_json(lambda d: "[" * 100_000), "nested too deeply", id="deep"),
    pytest.param(stats_json(lambda d: '{"min_count": 11, "min_count": 2, "types": []}'), "repeats the key", id="twice"),
    pytest.param(stats_json(lambda d: "x" * 2_000_000), "over the limit", id="too-long"),
    pytest.param(lambda p: p["configs"][protocol.LABEL_STATS].__setitem__("json", ["{}"]), "JSON text", id="list"),
    pytest.param(lambda p: p["configs"].pop(protocol.LABEL_STATS), "sent no label statistics", id="plain-without"),
]


@pytest.mark.parametrize(("mutate", "message"), LABEL_CASES)
def test_malformed_label_statistics_are_rejected(mutate: Callable[[dict], None], message: str) -> None:
    assert message in reason(reply(mutate))


def test_statistics_only_with_plain_composition() -> None:
    def with_stats(p: dict) -> None:
        p["configs"][protocol.LABEL_STATS] = {"json": json.dumps(make_stats().to_dict())}

    for composition in ("secure-sum", "none"):
        assert isinstance(validate_reply(reply(composition=composition), EXPECTED, lab=LAB), Accepted)
        assert "but sent per-lab statistics" in reason(reply(with_stats, composition=composition))


def laplace(**changes: Any) -> dict[str, Any]:
    return {**PrivacySpend("laplace", 1.0, 0.0, "cell", 2.0, 2.0).to_dict(), **changes}


def gaussian(**changes: Any) -> dict[str, Any]:
    return {**PrivacySpend("gaussian", 1.0, 1e-6, "donor", 3.0, 2.8).to_dict(), **changes}


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        pytest.param(laplace(delta=1e-5), "Laplace mechanism (pure ε) with δ", id="laplace-delta"),
        pytest.param(gaussian(delta=0.0), "outside (0, 1)", id="gaussian-no-delta"),
        pytest.param(gaussian(delta=1.0), "outside (0, 1)", id="gaussian-delta-1"),
        pytest.param(laplace(epsilon=0.0), "epsilon must be positive", id="epsilon-0"),
        pytest.param(laplace(epsilon=-1.0), "not a finite, non-negative number", id="epsilon-negative"),
        pytest.param(laplace(epsilon="1"), "not a finite, non-negative number", id="epsilon-string"),
        pytest.param(laplace(epsilon=True), "not a finite, non-negative number", id="epsilon-bool"),
        pytest.param(laplace(scale=0.0), "scale must be positive", id="no-noise"),
        pytest.param(laplace(mechanism="none"), "names mechanism 'none'", id="mechanism-none"),
        pytest.param(laplace(mechanism="exponential"), "names mechanism", id="mechanism-unknown"),
        pytest.param(laplace(unit="dataset"), "unit 'dataset'", id="unit"),
        pytest.param({"mechanism": "laplace", "epsilon": 1.0}, "must hold exactly", id="fields-missing"),
        pytest.param(laplace(note="trust me"), "must hold exactly", id="field-extra"),
    ],
)
def test_a_privacy_claim_must_fit_its_mechanism(claim: dict[str, Any], message: str) -> None:
    assert message in reason(reply(stats=make_stats(privacy=claim)))


def test_real_privacy_claims_are_accepted() -> None:
    for claim in (laplace(), gaussian(), None):
        verdict = validate_reply(reply(stats=make_stats(privacy=claim)), EXPECTED, lab=LAB)
        assert isinstance(verdict, Accepted) and verdict.reply.label_statistics is not None
        assert verdict.reply.label_statistics.privacy == claim


LAB_CASES = [
    pytest.param(lambda p: p["configs"].pop(protocol.LAB), "carries no fedarches.lab record", id="no-lab-record"),
    pytest.param(lab_field("lab-name", "lab_b"), "names lab 'lab_b'", id="other-lab"),
    pytest.param(lab_field("lab-name", ["lab_a"]), "lab-name ['lab_a'] is not a non-empty string", id="name-list"),
    pytest.param(lambda p: p["configs"][protocol.LAB].pop("n-epochs"), "lacks ['n-epochs']", id="no-epochs"),
    pytest.param(lab_field("n-epochs", True), "integer from 0", id="bool-epochs"),
    pytest.param(lab_field("n-epochs", 3.0), "integer from 0", id="float-epochs"),
    pytest.param(lab_field("n-epochs", -1), "integer from 0", id="negative-epochs"),
    pytest.param(lab_field("n-epochs", 10**30), "integer from 0", id="huge-epochs"),
    pytest.param(lab_field("n-epochs", [1, 2]), "integer from 0", id="list-epochs"),
    pytest.param(lab_field("fedarches-version", "v" * 65), "printable string", id="long-version"),
    pytest.param(lab_field("fedarches-version", 1), "printable string", id="int-version"),
    pytest.param(lab_field("composition", "all"), "composition 'all'", id="composition"),
    pytest.param(lab_field("composition", 1), "composition 1", id="composition-int"),
    pytest.param(lab_field("ledger-head", HEAD.upper()), "64 lowercase", id="head-upper"),
    pytest.param(lab_field("ledger-head", HEAD[:-1]), "64 lowercase", id="head-short"),
    pytest.param(lab_field("ledger-head", 5), "64 lowercase", id="head-int"),
    pytest.param(lab_field("ledger-seq", 0), "ledger-seq must be an integer from 1", id="seq-0"),
    pytest.param(lab_field("ledger-seq", True), "ledger-seq must be an integer from 1", id="seq-bool"),
    pytest.param(lab_field("ledger-seq", "4"), "ledger-seq must be an integer from 1", id="seq-string"),
    pytest.param(lab_field("n-cells", 23), "keys outside the protocol", id="extra-key"),
]


@pytest.mark.parametrize(("mutate", "message"), LAB_CASES)
def test_the_lab_record_is_checked(mutate: Callable[[dict], None], message: str) -> None:
    assert message in reason(reply(mutate))


RECORD_CASES = [
    pytest.param(lambda p: p["configs"].__setitem__("obs", {"barcodes": "AAAC"}), "not one a lab may send", id="obs"),
    pytest.param(
        lambda p: p["metrics"].__setitem__(protocol.LAB, p["configs"].pop(protocol.LAB)),
        "must be a config record",
        id="lab-as-metric",
    ),
    pytest.param(lambda p: p["metrics"].__setitem__(protocol.LAB, {}), "both as a config and a metric", id="two-kinds"),
    pytest.param(lambda p: p["configs"].__setitem__(protocol.LAB, ["lab_a"]), "not a record", id="lab-a-list"),
    pytest.param(lambda p: p["metrics"][protocol.TIMINGS].__setitem__("rss", 1.0), "outside", id="timing-name"),
    pytest.param(lambda p: p["metrics"][protocol.TIMINGS].__setitem__("train_s", np.nan), "finite", id="nan-s"),
    pytest.param(lambda p: p["metrics"][protocol.TIMINGS].__setitem__("train_s", -1.0), "non-negative", id="neg-s"),
    pytest.param(lambda p: p["metrics"][protocol.TIMINGS].__setitem__("train_s", True), "finite", id="bool-s"),
    pytest.param(lambda p: p["metrics"][protocol.TIMINGS].__setitem__("train_s", [1.0]), "finite", id="list-s"),
]


@pytest.mark.parametrize(("mutate", "message"), RECORD_CASES)
def test_only_the_protocols_records_and_keys(mutate: Callable[[dict], None], message: str) -> None:
    assert message in reason(reply(mutate))


class Hostile(dict):
    """A record whose reads raise: what no rule expects."""

    def get(self, *_: Any) -> Any:
        raise RuntimeError("boom")

    def __getitem__(self, _: Any) -> Any:
        raise RuntimeError("boom")


class Liar:
    """A value that cannot even be compared or shown."""

    def __eq__(self, other: object) -> bool:
        raise OverflowError("no")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        raise RecursionError("no")


@pytest.mark.parametrize(
    ("plain", "expected", "lab", "message"),
    [
        (None, EXPECTED, LAB, "not a reply"),
        (reply(), None, LAB, "malformed reply: AttributeError"),
        (reply(), EXPECTED, None, "not a string"),
        (PlainContent(configs=[1, 2]), EXPECTED, LAB, "config records are a list"),  # type: ignore[arg-type]
        (PlainContent(configs={protocol.LAB: Hostile(dict.fromkeys(LAB_KEYS))}), EXPECTED, LAB, "RuntimeError: boom"),
        (reply(lab_field("lab-name", Liar())), EXPECTED, LAB, "lab-name <Liar> is not a non-empty string"),
        (reply(lab_field("n-epochs", Liar())), EXPECTED, LAB, "n-epochs must be an integer from 0"),
    ],
)
def test_validation_never_raises(plain: Any, expected: Any, lab: Any, message: str) -> None:
    assert message in reason(plain, expected, lab)


def test_reasons_are_one_short_printable_line() -> None:
    text = reason(reply(lab_field("lab-name", "x\n" * 10_000)))
    assert len(text) <= validation.MAX_REASON_CHARS and text.isprintable()


def test_the_validator_knows_every_key_a_lab_may_send() -> None:
    """What the lab's egress allow-list lets out, the coordinator accepts (and the ledger anchor too)."""
    full = reply(**{"ledger-head": HEAD, "ledger-seq": 1})
    for name, rule in protocol.ALLOWED_REPLIES[protocol.MAP].items():
        if rule.keys is not None and name != protocol.ADAPTER_META:
            records = full.metrics if rule.kind == "metric" else full.configs
            assert set(records.get(name, {})) <= rule.keys
    assert isinstance(validate_reply(full, EXPECTED, lab=LAB), Accepted)


# -- the round: Flower messages in, LabOutcome out; one lab's malformed reply never stops the others ---------------


@pytest.fixture
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1


def lab_reply(content: RecordDict | Error, node_id: int) -> Message:
    request = Message(RecordDict(), dst_node_id=node_id, message_type=protocol.MAP)
    return Message(content, reply_to=request)


def forged_array(data: bytes, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype="float32", shape=(4, 1), stype=stype, data=data)


def header_only(shape: tuple[int, ...]) -> bytes:
    """A .npy header claiming ``shape`` float32 values, followed by no data."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def with_content(change: Callable[[RecordDict], None], **kwargs: Any) -> RecordDict:
    content = make_content(**kwargs)
    change(content)
    return content


def drop_grown_tensor(content: RecordDict) -> None:  # tensors and slices agree, so only the reference can tell
    content[protocol.ADAPTER].pop("dec.w")
    data = json.loads(str(content[protocol.ADAPTER_META]["slices"]))
    data.pop("dec.w")
    content[protocol.ADAPTER_META]["slices"] = json.dumps(data)


MESSAGE_CASES = [
    # the old validation let these escape (AttributeError, RecursionError, EOFError, MemoryError): no round at all
    pytest.param(lambda c: c[protocol.ADAPTER_META].__setitem__("slices", '["enc.w", "dec.w"]'), id="slices-a-list"),
    pytest.param(
        lambda c: c[protocol.LABEL_STATS].__setitem__("json", '{"min_count": 11, "types": [1]}'), id="types-not-objects"
    ),
    pytest.param(lambda c: c[protocol.ADAPTER_META].__setitem__("slices", "[" * 50_000), id="deep-json"),
    pytest.param(lambda c: c[protocol.ADAPTER].__setitem__("enc.w", forged_array(b"")), id="empty-array"),
    pytest.param(lambda c: c[protocol.ADAPTER].__setitem__("enc.w", forged_array(header_only((10**12,)))), id="bomb"),
    # the old validation accepted these
    pytest.param(
        lambda c: c[protocol.LABEL_STATS].__setitem__("json", json.dumps(make_stats().to_dict()).replace("0.8", "NaN")),
        id="nan-confidence",
    ),
    pytest.param(drop_grown_tensor, id="grown-tensor-missing"),
    # and rejected these, as the new one does
    pytest.param(lambda c: c[protocol.ADAPTER].__setitem__("enc.w", forged_array(b"\x93NUMPY junk")), id="junk-npy"),
    pytest.param(lambda c: c[protocol.ADAPTER].__setitem__("enc.w", forged_array(b"x", "torch")), id="stype"),
]


@pytest.mark.parametrize("change", MESSAGE_CASES)
def test_a_malformed_reply_rejects_only_its_lab(task_identity: None, change: Callable[[RecordDict], None]) -> None:
    settings = RoundSettings(coordinator_dir=None, bundle_dir=None, round_dir=None, round_id="r1")  # type: ignore[arg-type]
    hostile, honest = LabOutcome("lab_a", 1, status="running"), LabOutcome("lab_a", 2, status="running")
    _validate(hostile, lab_reply(with_content(change), 1), EXPECTED, settings)
    _validate(honest, lab_reply(make_content(**{"ledger-head": HEAD, "ledger-seq": 9}), 2), EXPECTED, settings)
    assert hostile.status == "rejected" and hostile.reason and hostile.adapter is None
    assert honest.status == "accepted" and honest.adapter is not None and honest.label_statistics is not None
    assert (honest.reply.lab.n_epochs, honest.reply.lab.ledger_head, honest.reply.lab.ledger_seq) == (3, HEAD, 9)
    assert honest.to_dict()["ledger_head"] == HEAD and honest.to_dict()["ledger_seq"] == 9


def test_errors_impostors_and_silence(task_identity: None) -> None:
    settings = RoundSettings(coordinator_dir=None, bundle_dir=None, round_dir=None, round_id="r1")  # type: ignore[arg-type]
    impostor = LabOutcome("lab_a", 1)
    _validate(impostor, lab_reply(make_content(), 5), EXPECTED, settings)
    assert impostor.status == "rejected" and "node 5" in impostor.reason
    failed = LabOutcome("lab_a", 1)
    _validate(failed, lab_reply(Error(code=1011, reason="lab error\x1b[2J" + "x" * 10_000), 1), EXPECTED, settings)
    assert failed.status == "failed" and failed.reason.isprintable() and len(failed.reason) < 400
    dropped = LabOutcome("lab_a", 1)
    _validate(dropped, lab_reply(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=""), 1), EXPECTED, settings)
    assert dropped.status == "dropped"
    silent = LabOutcome("lab_a", 1)
    _validate(silent, None, EXPECTED, settings)
    assert silent.status == "timed-out"


def test_logging_an_arrival_never_raises(task_identity: None, caplog: pytest.LogCaptureFixture) -> None:
    lab = LabOutcome("lab_a", 1)
    bad = lab_reply(with_content(lambda c: c[protocol.ADAPTER].__setitem__("enc.w", forged_array(b"junk"))), 1)
    with caplog.at_level(logging.INFO, logger="fedarches.server"):
        _log_arrival(lab, bad, 0.0)
        _log_arrival(lab, lab_reply(Error(code=1011, reason="\x00" * 5000), 1), 0.0)
    assert lab.reply_s is not None and "<- lab_a" in caplog.text


@pytest.mark.slow
def test_a_real_labs_reply_is_accepted_against_the_real_surgery_probe(demo_bundle: Any, lab_a: Any) -> None:
    """The probe's grown tensors are exactly those a real lab's surgery grows: honest replies pass."""
    from fedarches.client.mapping import MappingOptions, map_query

    expected = Expected.for_bundle(demo_bundle, min_count=11, max_adapter_bytes=1_048_576)
    adata = lab_a.copy()
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 2 == 0, "s1", "s2")
    options = MappingOptions(max_epochs=2, threads=1, progress_bar=False)
    result = map_query(adata, demo_bundle, batch_key="sample", lab_name=LAB, options=options)
    assert set(result.adapter.tensors) == set(expected.grown)
    content = make_content(result.adapter, result.label_statistics)
    verdict = validate_reply(PlainContent.from_content(content), expected, lab=LAB)
    assert isinstance(verdict, Accepted), verdict
    assert verdict.reply.adapter is not None and verdict.reply.adapter.batch_categories == ("lab_a/s1", "lab_a/s2")


# ---- new-type prototypes (scPoli atlases) --------------------------------------------------------------
PROTOTYPE_EXPECTED = replace(EXPECTED, reference_shapes={**REFERENCE, "prototypes": (4, 3)})


def _with_new_types(names: list[str], sums: np.ndarray, counts: np.ndarray, bundle_id: str = BUNDLE_ID) -> Any:
    from fedarches.shared.prototypes import NewTypePrototypes

    info = protocol.LabInfo(LAB, "0.1.0", 3, protocol.Composition.PLAIN)
    new_types = NewTypePrototypes(bundle_id, tuple(names), sums, counts)
    reply = protocol.MapReply(info, {"train_s": 1.0}, make_adapter(), make_stats(), new_types)
    return PlainContent.from_content(reply.to_content())


def test_new_type_prototypes_are_accepted_against_a_prototype_bundle() -> None:
    verdict = validate_reply(_with_new_types(["DC"], np.ones((1, 3)), np.array([30.0])), PROTOTYPE_EXPECTED, lab=LAB)
    assert isinstance(verdict, Accepted), verdict
    assert verdict.reply.new_types.names == ("DC",)
    assert verdict.reply.summary()["new_types"] == {"DC": 30.0}


@pytest.mark.parametrize(
    ("names", "sums", "counts", "bundle_id", "expected", "reason"),
    [
        (["DC"], np.ones((1, 3)), np.array([30.0]), BUNDLE_ID, EXPECTED, "has no prototypes"),
        (["DC"], np.ones((1, 3)), np.array([30.0]), "fedcba9876543210", PROTOTYPE_EXPECTED, "against bundle"),
        (["NK"], np.ones((1, 3)), np.array([30.0]), BUNDLE_ID, PROTOTYPE_EXPECTED, "already has"),
        (["Unknown"], np.ones((1, 3)), np.array([30.0]), BUNDLE_ID, PROTOTYPE_EXPECTED, "already has"),
        (["DC"], np.ones((1, 5)), np.array([30.0]), BUNDLE_ID, PROTOTYPE_EXPECTED, "shapes"),
        (["DC"], np.full((1, 3), np.inf), np.array([30.0]), BUNDLE_ID, PROTOTYPE_EXPECTED, "not finite"),
        (["DC"], np.ones((1, 3)), np.array([0.0]), BUNDLE_ID, PROTOTYPE_EXPECTED, "fewer than one"),
    ],
)
def test_bad_new_type_prototypes_reject_the_reply_with_a_reason(names, sums, counts, bundle_id, expected, reason):
    verdict = validate_reply(_with_new_types(names, sums, counts, bundle_id), expected, lab=LAB)
    assert isinstance(verdict, Rejected) and reason in verdict.reason, verdict


def test_new_type_records_must_come_together_and_hold_only_sums_and_counts() -> None:
    plain = _with_new_types(["DC"], np.ones((1, 3)), np.array([30.0]))
    lone = copy.deepcopy(plain)
    del lone.configs[protocol.NEW_TYPES_META]
    assert "without its counterpart" in validate_reply(lone, PROTOTYPE_EXPECTED, lab=LAB).reason
    extra = copy.deepcopy(plain)
    extra.arrays[protocol.NEW_TYPES]["cells"] = np.ones((64, 3))
    assert isinstance(validate_reply(extra, PROTOTYPE_EXPECTED, lab=LAB), Rejected)
    names = copy.deepcopy(plain)
    names.configs[protocol.NEW_TYPES_META]["names"] = "not json ["
    assert "malformed" in validate_reply(names, PROTOTYPE_EXPECTED, lab=LAB).reason
