"""The egress allow-list and the record forms of adapters and label statistics."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedarches.shared import protocol
from fedarches.shared.adapters import Adapter, TensorSlice
from fedarches.shared.errors import AdapterError, PrivacyError
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
    with pytest.raises(AdapterError, match="escapes"):
        protocol.record_to_files(record)
