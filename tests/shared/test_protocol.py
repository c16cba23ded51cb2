"""The egress allow-list and the record forms of adapters and label statistics."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter, TensorSlice
from fedarches.shared.errors import AdapterError, BundlePathError, PrivacyError
from fedarches.shared.labels import compute_label_statistics


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
    return RecordDict(
        {
            **protocol.adapter_to_records(adapter),
            protocol.LABEL_STATS: protocol.label_stats_to_record(stats),
            protocol.LAB: ConfigRecord({"lab-name": "lab_a", "fedarches-version": "0", "n-epochs": 3}),
            protocol.TIMINGS: MetricRecord({"train_s": 1.0}),
        }
    )


def test_adapter_round_trips_through_records(adapter: Adapter) -> None:
    back = protocol.adapter_from_records(reply(adapter))
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


def test_label_statistics_below_k_are_refused_at_the_coordinator(adapter: Adapter) -> None:
    record = reply(adapter)[protocol.LABEL_STATS]
    stats = protocol.label_stats_from_record(record, min_count=11)
    assert stats.types[1].n_cells is None  # B: 3 cells, suppressed
    forged = ConfigRecord({"json": record["json"].replace('"min_count": 11', '"min_count": 2')})
    with pytest.raises(PrivacyError, match="suppressed below"):
        protocol.label_stats_from_record(forged, min_count=11)
    leaking = ConfigRecord({"json": record["json"].replace('"suppressed"', "3", 1)})
    with pytest.raises(PrivacyError, match="below k"):
        protocol.label_stats_from_record(leaking, min_count=11)


def test_bundle_file_names_cannot_escape() -> None:
    record = ArrayRecord({"../../etc/passwd": Array(np.zeros(3, np.uint8))})
    with pytest.raises(BundlePathError, match="escapes"):
        protocol.record_to_files(record)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_decode_array_reads_only_plain_arrays_of_their_stated_size() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(protocol.decode_array(Array(values)), values)
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
            protocol.decode_array(array)


def test_adapter_from_records_turns_every_decoding_failure_into_an_adapter_error(adapter: Adapter) -> None:
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
        with pytest.raises(AdapterError):
            protocol.adapter_from_records(content)


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
        protocol.label_stats_from_record(ConfigRecord({"json": text}), min_count=11)
    with pytest.raises(AdapterError, match="exactly 'json'"):
        protocol.label_stats_from_record({"json": "{}", "more": "{}"}, min_count=11)
