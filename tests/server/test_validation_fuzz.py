"""Property-based tests of the coordinator's reply validation (hypothesis).

Whatever a lab sends, validation never raises; it never accepts a malformed adapter or malformed
label statistics (an independent oracle re-checks everything accepted); it accepts every
well-formed reply; and an accepted adapter, merged into the real demo atlas, gives a model that
scvi-tools loads (slow: trains the demo bundle once per session).
"""

from __future__ import annotations

import copy
import io
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from flwr.app import Array, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedarches.server.round import LabOutcome, _log_arrival, _validate
from fedarches.server.settings import RoundSettings
from fedarches.server.validation import (
    MAX_BATCH_NAME_CHARS,
    MAX_BATCHES,
    MAX_COUNT,
    Accepted,
    Expected,
    Rejected,
    validate_reply,
)
from fedarches.shared import protocol
from fedarches.shared.adapters import FLOAT_DTYPES, MAX_ABS_VALUE, Adapter, TensorSlice
from fedarches.shared.dp import PrivacySpend
from fedarches.shared.labels import SUPPRESSED, LabelStatistics, compute_label_statistics
from fedarches.shared.quality import UNKNOWN_LABEL
from fedarches.shared.wire import PlainContent

COMPOSITIONS = tuple(str(c) for c in protocol.Composition)

LAB = "lab_a"
BUNDLE_ID = "0123456789abcdef"
REFERENCE = {"enc.w": (4, 6), "enc.b": (4,), "dec.w": (3, 5), "emb": (2, 3), "bn.mean": (4,)}
GROWN = {"enc.w": 1, "dec.w": 1, "emb": 0}
CATEGORIES = ("T", "B", "NK")
EXPECTED = Expected(
    bundle_id=BUNDLE_ID,
    reference_shapes=REFERENCE,
    grown=GROWN,
    label_categories=CATEGORIES,
    reference_batches=("ref1", "ref2"),
    min_count=11,
    max_adapter_bytes=2048,
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------------------

texts = (
    st.text(max_size=12)
    | st.text(alphabet="\x00\n\x1b\u202e\U0001f600é/ ", max_size=8)
    | st.builds(lambda: "x" * 5000)  # built, not st.just: its repr would be 5 kB
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.just(10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | st.binary(max_size=12)
)
junk_arrays = hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
junk = st.recursive(
    scalars | junk_arrays,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4) | st.tuples(inner),
    max_leaves=12,
)
record_names = st.sampled_from([protocol.LAB, protocol.ADAPTER, protocol.ADAPTER_META, protocol.LABEL_STATS]) | texts
record_keys = (
    st.sampled_from(
        [
            *("lab-name", "fedarches-version", "n-epochs", "composition", "ledger-head", "ledger-seq", "format"),
            *("json", "bundle-id", "batch-categories", "slices", "train_s", "enc.w", "dec.w", "emb", "enc.b"),
        ]
    )
    | texts
)
batch_names = (
    st.just(LAB)
    | texts.map(lambda t: f"{LAB}/{t}")
    | texts
    | st.sampled_from(["ref1", "lab_ab", "lab_b/x", "", f"{LAB}/", f"{LAB}/" + "y" * 300])
)


def float_values(shape: tuple[int, ...], dtype: Any = np.float32) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype, shape, elements=st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE, width=32))


@st.composite
def valid_adapters(draw: st.DrawFn) -> Adapter:
    batches = draw(
        st.lists(
            st.just(LAB) | st.text(alphabet="abcXYZ09_-.", min_size=1, max_size=10).map(lambda t: f"{LAB}/{t}"),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    tensors = {}
    for name, axis in GROWN.items():
        shape = list(REFERENCE[name])
        offset, shape[axis] = shape[axis], len(batches)
        values = draw(float_values(tuple(shape), np.float32))
        if dtype == np.float16:
            values = np.clip(values, -60000, 60000)  # float16 stops at 65504
        values = values.astype(dtype)
        tensors[name] = TensorSlice(values, axis, offset)
    return Adapter(BUNDLE_ID, tuple(batches), tensors)


@st.composite
def valid_stats(draw: st.DrawFn) -> LabelStatistics:
    counts = draw(st.lists(st.integers(0, 60), min_size=4, max_size=4))
    predicted = [t for t, n in zip([*CATEGORIES, UNKNOWN_LABEL], counts, strict=True) for _ in range(n)]
    n = len(predicted)
    confidence = np.asarray(draw(hnp.arrays(np.float64, n, elements=st.floats(0, 1))))
    low = confidence < 0.5
    stats = compute_label_statistics(predicted, confidence, low, [*CATEGORIES, UNKNOWN_LABEL], min_count=11)
    claim = draw(
        st.none()
        | st.builds(lambda e: PrivacySpend("laplace", e, 0.0, "cell", 2 / e, 2.0).to_dict(), st.floats(0.01, 10))
        | st.builds(lambda e: PrivacySpend("gaussian", e, 1e-6, "donor", 5 / e, 4.2).to_dict(), st.floats(0.01, 10))
    )
    return replace(stats, privacy=claim)


def content_of(adapter: Adapter | None, stats: LabelStatistics | None, composition: str, **lab: Any) -> RecordDict:
    info = protocol.LabInfo(LAB, "0.1.0", 7, protocol.Composition(composition))
    content = protocol.MapReply(info, {"train_s": 1.0, "total_s": 2.5}, adapter, stats).to_content()
    for key, value in lab.items():
        content[protocol.LAB][key] = value
    return content


@st.composite
def valid_replies(draw: st.DrawFn) -> PlainContent:
    composition = draw(st.sampled_from(COMPOSITIONS))
    adapter = draw(st.none() | valid_adapters())
    stats = draw(valid_stats()) if composition == "plain" else None
    anchor = draw(
        st.fixed_dictionaries({}, optional={"ledger-head": st.just("0f" * 32), "ledger-seq": st.integers(1, 2**63 - 1)})
    )
    return PlainContent.from_content(content_of(adapter, stats, composition, **anchor))


def _parts(plain: PlainContent) -> dict[str, dict[str, Any]]:
    return {
        "configs": copy.deepcopy(dict(plain.configs)),
        "arrays": copy.deepcopy(dict(plain.arrays)),
        "metrics": copy.deepcopy(dict(plain.metrics)),
    }


def _json_field(parts: dict, record: str, key: str) -> Any:
    try:
        return json.loads(parts["configs"][record][key])
    except Exception:  # noqa: BLE001 - an earlier mutation may have broken it already
        return None


def _mutate(draw: st.DrawFn, parts: dict[str, dict[str, Any]]) -> None:
    """One random change to a reply: the kinds of breakage a faulty or hostile lab could send."""
    configs, arrays, metrics = parts["configs"], parts["arrays"], parts["metrics"]
    tensors = arrays.get(protocol.ADAPTER, {})
    if not isinstance(tensors, dict):  # an earlier mutation replaced the record with junk
        tensors = arrays[protocol.ADAPTER] = {}
    op = draw(st.integers(0, 13))
    if op == 0 and tensors:  # drop a tensor (and maybe its slice)
        name = draw(st.sampled_from(sorted(tensors)))
        del tensors[name]
        if draw(st.booleans()):
            slices = _json_field(parts, protocol.ADAPTER_META, "slices")
            if isinstance(slices, dict):
                slices.pop(name, None)
                configs[protocol.ADAPTER_META]["slices"] = json.dumps(slices)
    elif op == 1:  # add or replace a tensor, with its slice
        tensors = arrays.setdefault(protocol.ADAPTER, {})
        name = draw(st.sampled_from(sorted(REFERENCE)) | texts)
        tensors[name] = draw(junk_arrays | float_values((4, 1)) | float_values((2, 1)) | float_values((1, 3)) | junk)
        slices = _json_field(parts, protocol.ADAPTER_META, "slices")
        if isinstance(slices, dict):
            slices[name] = draw(
                st.fixed_dictionaries({"axis": st.integers(-1, 3) | junk, "offset": st.integers(-1, 7) | junk}) | junk
            )
            configs.setdefault(protocol.ADAPTER_META, {})["slices"] = json.dumps(slices, default=str)
    elif op == 2 and tensors:  # poison one value of a tensor
        name = draw(st.sampled_from(sorted(tensors)))
        values = tensors[name]
        if isinstance(values, np.ndarray) and values.size and values.dtype in FLOAT_DTYPES:
            values = values.copy()
            poison = draw(st.sampled_from([np.nan, np.inf, -np.inf, MAX_ABS_VALUE * 1.5, -1e30]))
            with np.errstate(over="ignore"):  # in float16 the large ones become infinite: poison all the same
                values.flat[draw(st.integers(0, values.size - 1))] = poison
            tensors[name] = values
    elif op == 3 and tensors:  # change a tensor's dtype or shape
        name = draw(st.sampled_from(sorted(tensors)))
        values = np.asarray(tensors[name]) if isinstance(tensors[name], np.ndarray) else np.zeros((4, 1))
        with np.errstate(all="ignore"):
            tensors[name] = draw(
                st.sampled_from(
                    [
                        values.astype(np.int64, casting="unsafe"),
                        values.astype(np.complex64),
                        values.astype(np.longdouble),
                        values.astype(">f4"),
                        values.reshape(-1),
                        np.concatenate([values, values], axis=-1) if values.ndim else values,
                        values[..., :0] if values.ndim else values,
                    ]
                )
            )
    elif op == 4:  # the slice of a tensor
        slices = _json_field(parts, protocol.ADAPTER_META, "slices")
        if isinstance(slices, dict) and slices:
            name = draw(st.sampled_from(sorted(slices)))
            slices[name] = {
                "axis": draw(st.integers(-2, 3) | st.booleans() | st.floats()),
                "offset": draw(st.integers(-1, 7) | st.booleans() | st.just(2**64)),
            }
            configs[protocol.ADAPTER_META]["slices"] = json.dumps(slices)
    elif op == 5:  # adapter metadata fields
        record = configs.setdefault(protocol.ADAPTER_META, {})
        key = draw(st.sampled_from(["format", "bundle-id", "batch-categories", "slices"]) | texts)
        record[key] = draw(st.lists(batch_names, max_size=4) | junk | texts.map(lambda t: '{"enc.w": ' + t))
    elif op == 6:  # batch names
        record = configs.setdefault(protocol.ADAPTER_META, {})
        record["batch-categories"] = draw(st.lists(batch_names, max_size=5))
    elif op == 7:  # a LAB field
        record = configs.setdefault(protocol.LAB, {})
        record[draw(record_keys)] = draw(junk | st.sampled_from(["plain", "secure-sum", "none", LAB, "A" * 64]))
    elif op == 8:  # drop or add a record
        kind = draw(st.sampled_from(["configs", "arrays", "metrics"]))
        if parts[kind] and draw(st.booleans()):
            del parts[kind][draw(st.sampled_from(sorted(parts[kind])))]
        else:
            parts[kind][draw(record_names)] = draw(st.dictionaries(record_keys, junk, max_size=3) | junk)
    elif op == 9:  # a field of one cell type in the label statistics
        stats = _json_field(parts, protocol.LABEL_STATS, "json")
        if isinstance(stats, dict) and isinstance(stats.get("types"), list) and stats["types"]:
            entry = draw(st.sampled_from(stats["types"]))
            if isinstance(entry, dict):
                key = draw(st.sampled_from(["cell_type", "n_cells", "mean_confidence", "n_low_confidence"]) | texts)
                entry[key] = draw(
                    st.integers(-5, 2 * MAX_COUNT) | st.just(SUPPRESSED) | st.sampled_from(CATEGORIES) | scalars
                )
            configs[protocol.LABEL_STATS]["json"] = json.dumps(stats, default=str)
    elif op == 10:  # the statistics' k, types or privacy claim
        stats = _json_field(parts, protocol.LABEL_STATS, "json")
        if isinstance(stats, dict):
            key = draw(st.sampled_from(["min_count", "types", "privacy"]) | texts)
            stats[key] = draw(
                st.integers(-1, 30)
                | st.dictionaries(
                    st.sampled_from(["mechanism", "epsilon", "delta", "unit", "scale", "sensitivity"]) | texts,
                    st.sampled_from(["laplace", "gaussian", "none", "cell", "donor", "dataset"])
                    | st.floats(allow_nan=False, allow_infinity=False)
                    | scalars,
                )
                | st.lists(
                    st.fixed_dictionaries(
                        {
                            "cell_type": st.sampled_from([*CATEGORIES, UNKNOWN_LABEL]) | texts,
                            "n_cells": st.integers(-1, 100) | st.just(SUPPRESSED) | scalars,
                            "mean_confidence": st.floats(-1, 2) | st.just(SUPPRESSED) | scalars,
                            "n_low_confidence": st.integers(-1, 100) | st.just(SUPPRESSED) | scalars,
                        }
                    ),
                    max_size=6,
                )
                | junk
            )
            configs[protocol.LABEL_STATS]["json"] = json.dumps(stats, default=str)
    elif op == 11:  # the statistics' text itself
        configs.setdefault(protocol.LABEL_STATS, {})["json"] = draw(
            texts | st.builds(lambda: "[" * 5000) | st.just('{"min_count": 11, "types": [], "types": []}') | junk
        )
    elif op == 12:  # a timing
        metrics.setdefault(protocol.TIMINGS, {})[draw(record_keys)] = draw(
            st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70) | junk
        )
    elif op == 13:  # composition against what the reply holds
        configs.setdefault(protocol.LAB, {})["composition"] = draw(st.sampled_from(COMPOSITIONS))


@st.composite
def mutated_replies(draw: st.DrawFn) -> PlainContent:
    parts = _parts(draw(valid_replies()))
    for _ in range(draw(st.integers(1, 4))):
        _mutate(draw, parts)
    return PlainContent(**parts)


plain_junk = st.builds(
    PlainContent,
    configs=st.dictionaries(record_names, st.dictionaries(record_keys, junk, max_size=5) | junk, max_size=5) | junk,
    arrays=st.dictionaries(record_names, st.dictionaries(record_keys, junk_arrays | junk, max_size=4) | junk) | junk,
    metrics=st.dictionaries(record_names, st.dictionaries(record_keys, scalars, max_size=4) | junk) | junk,
)

# -- the oracle: what an accepted reply must satisfy, checked independently of the validator -------------------------


def assert_sound(verdict: Accepted | Rejected, plain: PlainContent, expected: Expected = EXPECTED) -> None:
    """``verdict`` is a verdict; when it accepts, everything accepted is well formed."""
    assert isinstance(verdict, Accepted | Rejected)
    if isinstance(verdict, Rejected):
        assert isinstance(verdict.reason, str) and verdict.reason and verdict.reason.isprintable()
        return
    lab = plain.configs[protocol.LAB]
    lab_keys = protocol.ALLOWED_REPLIES[protocol.MAP][protocol.LAB].keys
    assert lab["lab-name"] == LAB and lab_keys is not None and set(lab) <= lab_keys | {"ledger-head", "ledger-seq"}
    decoded = verdict.reply
    assert type(decoded.lab.n_epochs) is int and decoded.lab.n_epochs >= 0
    assert decoded.lab.composition in COMPOSITIONS
    assert all(type(v) is float and math.isfinite(v) and v >= 0 for v in decoded.timings.values())
    assert set(plain.configs) | set(plain.arrays) | set(plain.metrics) <= set(protocol.ALLOWED_REPLIES[protocol.MAP])
    adapter = decoded.adapter
    assert (adapter is None) == (protocol.ADAPTER not in plain.arrays)
    if adapter is not None:
        batches = adapter.batch_categories
        assert adapter.bundle_id == expected.bundle_id
        assert 1 <= len(batches) <= MAX_BATCHES and len(set(batches)) == len(batches)
        assert all(isinstance(b, str) and 0 < len(b) <= MAX_BATCH_NAME_CHARS for b in batches)
        assert all((b == LAB or b.startswith(f"{LAB}/")) and b not in expected.reference_batches for b in batches)
        assert set(adapter.tensors) == set(expected.grown) and adapter.nbytes <= expected.max_adapter_bytes
        for name, t in adapter.tensors.items():
            shape = list(expected.reference_shapes[name])
            assert t.axis == expected.grown[name] and t.offset == shape[t.axis]
            shape[t.axis] = len(batches)
            assert t.values.shape == tuple(shape) and t.values.dtype in FLOAT_DTYPES
            assert np.isfinite(t.values).all() and float(np.abs(t.values).max()) <= MAX_ABS_VALUE
    stats = decoded.label_statistics
    assert (stats is not None) == (decoded.lab.composition == "plain")
    if stats is not None:
        assert type(stats.min_count) is int and stats.min_count >= expected.min_count
        names = [t.cell_type for t in stats.types]
        assert len(set(names)) == len(names) and set(names) <= {*expected.label_categories, UNKNOWN_LABEL}
        for t in stats.types:
            for count in (t.n_cells, t.n_low_confidence):
                assert count is None or (type(count) is int and stats.min_count <= count <= MAX_COUNT)
            assert t.n_cells is None or t.n_low_confidence is None or t.n_low_confidence <= t.n_cells
            assert t.mean_confidence is None or 0.0 <= t.mean_confidence <= 1.0
        claim = stats.privacy
        if claim is not None:
            assert claim["mechanism"] in ("laplace", "gaussian") and claim["unit"] in ("cell", "donor")
            assert math.isfinite(claim["epsilon"]) and claim["epsilon"] > 0
            assert claim["delta"] == 0 if claim["mechanism"] == "laplace" else 0 < claim["delta"] < 1


# -- properties -------------------------------------------------------------------------------------------------------


@FAST
@given(plain=valid_replies())
def test_every_well_formed_reply_is_accepted(plain: PlainContent) -> None:
    verdict = validate_reply(plain, EXPECTED, lab=LAB)
    assert isinstance(verdict, Accepted), verdict
    assert_sound(verdict, plain)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain=mutated_replies())
def test_a_mutated_reply_never_raises_and_nothing_malformed_is_accepted(plain: PlainContent) -> None:
    assert_sound(validate_reply(plain, EXPECTED, lab=LAB), plain)


@FAST
@given(plain=plain_junk | junk, lab=st.just(LAB) | junk)
def test_random_structures_never_raise(plain: Any, lab: Any) -> None:
    verdict = validate_reply(plain, EXPECTED, lab=lab)
    honest_form = isinstance(lab, str) and lab == LAB and isinstance(plain, PlainContent)
    assert isinstance(verdict, Rejected) or honest_form
    if honest_form:
        assert_sound(verdict, plain)


@FAST
@given(adapter=valid_adapters(), grown=st.dictionaries(st.sampled_from(sorted(REFERENCE)), st.integers(0, 1)))
def test_an_adapter_must_carry_exactly_the_tensors_that_grow(adapter: Adapter, grown: dict[str, int]) -> None:
    """Against any other claim of which tensors grow (and along which axis), the same adapter is refused."""
    grown = {k: a for k, a in grown.items() if a < len(REFERENCE[k])}
    plain = PlainContent.from_content(content_of(adapter, None, "none"))
    verdict = validate_reply(plain, replace(EXPECTED, grown=grown, max_adapter_bytes=10**6), lab=LAB)
    assert isinstance(verdict, Accepted) == (grown == GROWN)


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


arrays_on_the_wire = (
    st.binary(max_size=200)
    | junk_arrays.map(_npy)
    | st.tuples(junk_arrays.map(_npy), st.binary(max_size=20)).map(lambda p: p[0][: len(p[0]) // 2] + p[1])
    | st.tuples(st.integers(0, 2**40), st.binary(max_size=16)).map(
        lambda p: _npy(np.zeros(0, np.float32)).replace(b"(0,)", f"({p[0]},)".encode()) + p[1]
    )
)


@FAST
@given(data=arrays_on_the_wire, stype=st.just("numpy.ndarray") | texts, name=st.sampled_from(sorted(GROWN)) | texts)
def test_whatever_bytes_an_array_carries_only_its_lab_is_rejected(data: bytes, stype: str, name: str) -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    rng = np.random.default_rng(0)
    good = Adapter(
        BUNDLE_ID,
        (LAB,),
        {
            n: TensorSlice(rng.normal(size=_grown_shape(n, 1)).astype(np.float32), a, REFERENCE[n][a])
            for n, a in GROWN.items()
        },
    )
    content = content_of(good, None, "none")
    content[protocol.ADAPTER][name] = Array(dtype="float32", shape=(4, 1), stype=stype, data=data)
    run = RoundSettings(coordinator_dir=None, bundle_dir=None, round_dir=None, round_id="r")  # type: ignore[arg-type]
    hostile, honest = LabOutcome(LAB, 1), LabOutcome(LAB, 2)
    request = Message(RecordDict(), dst_node_id=1, message_type=protocol.MAP)
    reply = Message(content, reply_to=request)
    _log_arrival(hostile, reply, 0.0)
    _validate(hostile, reply, EXPECTED, run)
    request = Message(RecordDict(), dst_node_id=2, message_type=protocol.MAP)
    _validate(honest, Message(content_of(good, None, "none"), reply_to=request), EXPECTED, run)
    assert honest.status == "accepted"
    assert hostile.status in ("accepted", "rejected") and hostile.reason.isprintable()
    if hostile.status == "accepted":  # the bytes happened to decode to a well-formed tensor
        plain = PlainContent.from_content(content)
        assert_sound(validate_reply(plain, EXPECTED, lab=LAB), plain)


def _grown_shape(name: str, n_new: int) -> tuple[int, ...]:
    shape = list(REFERENCE[name])
    shape[GROWN[name]] = n_new
    return tuple(shape)


# -- the real model: an accepted adapter merges into an atlas scvi-tools loads ---------------------------------------


@pytest.fixture(scope="module")
def real_round(files_bundle: Any) -> tuple[Any, Expected]:
    expected = Expected.for_bundle(files_bundle, min_count=11, max_adapter_bytes=1_048_576)
    return files_bundle, expected


@st.composite
def real_adapters(draw: st.DrawFn, expected: Expected) -> Adapter:
    """Adapters for the real reference: mostly well formed (any finite values within bounds), some broken."""
    batches = draw(
        st.lists(
            st.just(LAB) | st.sampled_from(["p1", "p2", "é x"]).map(lambda t: f"{LAB}/{t}"),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3, MAX_ABS_VALUE]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, axis in expected.grown.items():
        shape = list(expected.reference_shapes[name])
        offset, shape[axis] = shape[axis], len(batches)
        values = np.clip(rng.normal(scale=scale, size=shape), -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)
        tensors[name] = TensorSlice(values, axis, offset)
    breakage = draw(st.sampled_from(["none", "none", "none", "nan", "drop", "extra", "shape", "huge"]))
    names = sorted(tensors)
    if breakage == "nan":
        tensors[names[0]].values.flat[0] = np.nan
    elif breakage == "drop":
        del tensors[names[-1]]
    elif breakage == "extra":
        other = next(
            n for n in sorted(expected.reference_shapes) if n not in expected.grown and expected.reference_shapes[n]
        )
        shape = list(expected.reference_shapes[other])
        offset, shape[0] = shape[0], len(batches)
        tensors[other] = TensorSlice(np.zeros(shape, np.float32), 0, offset)
    elif breakage == "shape":
        t = tensors[names[0]]
        tensors[names[0]] = TensorSlice(np.concatenate([t.values, t.values], axis=t.axis), t.axis, t.offset)
    elif breakage == "huge":
        tensors[names[0]].values.flat[0] = MAX_ABS_VALUE * 10
    return Adapter(expected.bundle_id, tuple(batches), tensors)


@pytest.mark.slow
def test_an_accepted_adapter_always_merges_into_an_atlas_scvi_tools_loads(
    real_round: tuple[Any, Expected], keys: tuple[Path, Path]
) -> None:
    bundle, expected = real_round
    outcomes: list[str] = []

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        adapter = data.draw(real_adapters(expected))
        plain = PlainContent.from_content(content_of(adapter, None, "none"))
        verdict = validate_reply(plain, expected, lab=LAB)
        assert_sound(verdict, plain, expected)
        outcomes.append(type(verdict).__name__)
        if isinstance(verdict, Accepted):
            _merge_and_load(bundle, verdict.reply.adapter, keys[0])

    check()
    assert "Accepted" in outcomes


def _merge_and_load(bundle: Any, adapter: Adapter, signing_key: Path) -> None:
    """Merge ``adapter`` into ``bundle``; load the atlas with scvi-tools for cells of the adapter's batches."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import scvi

    from fedarches.server.merge import merge_adapters

    with tempfile.TemporaryDirectory() as tmp:
        atlas = merge_adapters(bundle, [(LAB, adapter)], Path(tmp) / "atlas", signing_key, round_id="fuzz")
        assert atlas.batch_categories[-len(adapter.batch_categories) :] == list(adapter.batch_categories)
        setup = atlas.setup_args
        batches = [b for b in adapter.batch_categories for _ in range(2)]
        obs = pd.DataFrame({setup["batch_key"]: pd.Categorical(batches)}, index=[f"c{i}" for i in range(len(batches))])
        obs[setup["labels_key"]] = setup.get("unlabeled_category") or "Unknown"
        counts = sp.csr_matrix(np.ones((len(batches), len(atlas.var_names)), np.float32))
        query = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=atlas.var_names))
        model_dir = atlas.write_model_dir(Path(tmp) / "model")
        model = getattr(scvi.model, atlas.model_class).load_query_data(query, str(model_dir))
        state = {k: v.detach().cpu().numpy() for k, v in model.module.state_dict().items()}
        merged = atlas.reference_state()
        for name, t in adapter.tensors.items():  # the loaded model holds the adapter's columns where they belong
            index = [slice(None)] * t.values.ndim
            index[t.axis] = slice(t.offset, t.offset + t.values.shape[t.axis])
            np.testing.assert_array_equal(state[name][tuple(index)], t.values.astype(np.float32))
            np.testing.assert_array_equal(state[name], merged[name])
        model.is_trained_ = True
        assert model.get_latent_representation().shape[0] == len(batches)
