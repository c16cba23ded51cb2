"""The typed messages: their records, the egress allow-list derived from them, strict decoding."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter, TensorSlice
from fedarches.shared.errors import AdapterError, BundlePathError, PrivacyError, ProtocolError
from fedarches.shared.labels import compute_label_statistics
from fedarches.shared.wire import PlainContent, decode_array


@pytest.fixture
def adapter() -> Adapter:
    rng = np.random.default_rng(0)
    tensors = {
        "z_encoder.w": TensorSlice(rng.normal(size=(8, 1)).astype(np.float32), axis=1, offset=3),
        "decoder.w": TensorSlice(rng.normal(size=(8, 1)).astype(np.float32), axis=1, offset=3),
    }
    return Adapter("0123456789abcdef", ("lab_a",), tensors)


def reply(adapter: Adapter) -> RecordDict:
    stats = compute_label_statistics(
        ["T"] * 20 + ["B"] * 3 + ["NK"] * 8, np.ones(31), np.zeros(31, bool), ["T", "B", "NK"]
    )
    info = protocol.LabInfo("lab_a", "0", 3, protocol.Composition.PLAIN, ledger_seq=4, ledger_head="a" * 64)
    return protocol.MapReply(info, {"train_s": 1.0}, adapter, stats).to_content()


def decode(content: RecordDict) -> protocol.MapReply:
    return protocol.MapReply.from_plain(PlainContent.from_content(content))


def test_a_reply_round_trips_through_its_records(adapter: Adapter) -> None:
    decoded = decode(reply(adapter))
    assert decoded.lab == protocol.LabInfo("lab_a", "0", 3, protocol.Composition.PLAIN, 4, "a" * 64)
    assert decoded.timings == {"train_s": 1.0} and decoded.label_statistics.min_count == 11
    back = decoded.adapter
    assert back.bundle_id == adapter.bundle_id and back.batch_categories == adapter.batch_categories
    for name, t in adapter.tensors.items():
        np.testing.assert_array_equal(back.tensors[name].values, t.values)
        assert (back.tensors[name].axis, back.tensors[name].offset) == (t.axis, t.offset)


def test_a_proper_reply_passes_the_allow_list(adapter: Adapter) -> None:
    protocol.check_egress(protocol.MAP, reply(adapter), max_array_bytes=1024)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.__setitem__("obs", ConfigRecord({"barcodes": ["AAAC"]})), "not on the egress allow-list"),
        (lambda c: c[protocol.LAB].__setitem__("n-cells", 23), "outside the allow-list"),
        (lambda c: c.__setitem__(protocol.ADAPTER, ArrayRecord({"x": Array(np.arange(5))})), "only float tensors"),
        (lambda c: c[protocol.LAB].__setitem__("lab-name", b"raw"), "raw bytes"),
        (lambda c: c.__setitem__(protocol.ADAPTER, ArrayRecord({"x": Array(np.zeros(600, np.float32))})), "limit"),
        (lambda c: c.__setitem__(protocol.LABEL_STATS, MetricRecord({"json": 1.0})), "must be a config record"),
    ],
)
def test_anything_else_is_refused(adapter: Adapter, change, message: str) -> None:
    content = reply(adapter)
    change(content)
    with pytest.raises(PrivacyError, match=message):
        protocol.check_egress(protocol.MAP, content, max_array_bytes=1024)


def test_label_statistics_releasing_a_count_below_their_own_k_do_not_decode(adapter: Adapter) -> None:
    record = reply(adapter)[protocol.LABEL_STATS]
    stats = protocol.decode_label_statistics(record)
    assert stats.types[1].n_cells is None  # B: 3 cells, suppressed
    leaking = ConfigRecord({"json": record["json"].replace('"suppressed"', "3", 1)})
    with pytest.raises(PrivacyError, match="below k"):
        protocol.decode_label_statistics(leaking)


def test_the_allow_list_is_derived_from_the_reply_definition() -> None:
    rules = protocol.ALLOWED_REPLIES[protocol.MAP]
    assert rules is protocol.MapReply.RECORDS
    assert rules[protocol.LAB].keys == {f.name.replace("_", "-") for f in fields(protocol.LabInfo)}
    assert rules[protocol.TIMINGS].keys == set(protocol.TIMING_KEYS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop(protocol.LABEL_STATS), "sent no label statistics"),
        (lambda c: c.pop(protocol.ADAPTER_META), "without its counterpart"),
        (lambda c: c[protocol.LAB].__setitem__("composition", "public"), "not one of"),
        (lambda c: c[protocol.LAB].__setitem__("n-epochs", True), "n-epochs"),
        (lambda c: c[protocol.LAB].__setitem__("ledger-head", "x"), "ledger-head"),
        (lambda c: c[protocol.TIMINGS].__setitem__("train_s", -1.0), "non-negative"),
        (lambda c: c.__setitem__("extra", ConfigRecord({"a": 1})), "not one a lab may send"),
    ],
)
def test_a_reply_that_breaks_its_definition_is_a_protocol_error(adapter: Adapter, change, message: str) -> None:
    content = reply(adapter)
    change(content)
    with pytest.raises(ProtocolError, match=message):
        decode(content)


def test_bundle_file_names_cannot_escape() -> None:
    record = ArrayRecord({"../../etc/passwd": Array(np.zeros(3, np.uint8))})
    with pytest.raises(BundlePathError, match="escapes"):
        protocol.BundleTransfer.from_record(record)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_decode_array_reads_only_plain_arrays_of_their_stated_size() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_array(Array(values)), values)
    forged = [
        (Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=_npy_header((10**12,))), "describes"),
        (Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=_npy_header((2,)) + b"\0" * 12), "describes"),
        (Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=_npy_header((1,), "|O") + b"\0" * 8), "object"),
        (Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b""), "EOF"),
        (Array(dtype="float32", shape=(1,), stype="torch.Tensor", data=bytes(Array(values).data)), "serialized as"),
        (Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"\x93NUMPY\x03\x00" + b"\0" * 20), "version"),
    ]
    for array, message in forged:
        with pytest.raises(ValueError, match=message):
            decode_array(array)


def test_every_decoding_failure_of_an_adapter_is_a_fedarches_error(adapter: Adapter) -> None:
    cases = [
        lambda c: c[protocol.ADAPTER].__setitem__(
            "decoder.w", Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"")
        ),  # EOFError before
        lambda c: c[protocol.ADAPTER_META].__setitem__("slices", '["z_encoder.w", "decoder.w"]'),  # AttributeError
        lambda c: c[protocol.ADAPTER_META].__setitem__("slices", "[" * 50_000),  # RecursionError
        lambda c: c[protocol.ADAPTER_META].__setitem__("slices", '{"decoder.w": {"axis": 1, "offset": 3}}' * 2),
        lambda c: c[protocol.ADAPTER_META].__setitem__("batch-categories", "lab_a"),  # was read as l, a, b, _, a
        lambda c: c[protocol.ADAPTER_META].__setitem__("note", "x"),
    ]
    for change in cases:
        content = reply(adapter)
        change(content)
        with pytest.raises((AdapterError, ProtocolError)):
            decode(content)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"min_count": 11, "types": [], "min_count": 11}', "repeats the key"),
        ('{"min_count": NaN, "types": []}', "not JSON"),
        ('{"min_count": 11, "types": [1]}', "must be an object"),
        ('{"min_count": true, "types": []}', "positive integer"),
        ('{"min_count": 11, "types": [], "note": 1}', "unexpected"),
        (
            '{"min_count": 11, "types": [{"cell_type": "T", "n_cells": true, "mean_confidence": 0.5,'
            ' "n_low_confidence": "suppressed"}]}',
            "non-negative integer",
        ),
        (
            '{"min_count": 11, "types": [{"cell_type": "T", "n_cells": 20, "mean_confidence": 0.5,'
            ' "n_low_confidence": 30}]}',
            "30 low-confidence cells out of 20",
        ),
        (
            '{"min_count": 11, "types": [{"cell_type": "T", "n_cells": 20, "mean_confidence": 1e999,'
            ' "n_low_confidence": "suppressed"}]}',
            "non-finite",
        ),
        ("[" * 50_000, "nested too deeply"),
    ],
)
def test_label_statistics_are_parsed_strictly(text: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        protocol.decode_label_statistics(ConfigRecord({"json": text}))
    with pytest.raises(AdapterError, match="exactly 'json'"):
        protocol.decode_label_statistics({"json": "{}", "more": "{}"})
