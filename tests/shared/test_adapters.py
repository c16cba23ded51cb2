from __future__ import annotations

import numpy as np
import pytest

from fedarches.shared.adapters import (
    Adapter,
    TensorSlice,
    apply_adapters,
    check_reference_unchanged,
    extract_adapter,
    grown_axes,
)
from fedarches.shared.errors import AdapterError


def _states(n_new: int = 1):
    rng = np.random.default_rng(0)
    reference = {"enc.w": rng.normal(size=(4, 6)).astype(np.float32), "dec.b": rng.normal(size=(3,)).astype(np.float32)}
    query = {
        "enc.w": np.concatenate([reference["enc.w"], rng.normal(size=(4, n_new)).astype(np.float32)], axis=1),
        "dec.b": reference["dec.b"].copy(),
    }
    return reference, query


def test_extract_apply_round_trip() -> None:
    reference, query = _states(2)
    adapter = extract_adapter(reference, query, bundle_id="abc", batch_categories=["lab/1", "lab/2"])
    assert list(adapter.tensors) == ["enc.w"]
    assert adapter.tensors["enc.w"].values.shape == (4, 2)
    assert adapter.nbytes == 4 * 2 * 4
    rebuilt = apply_adapters(reference, [adapter])
    for name in query:
        np.testing.assert_array_equal(rebuilt[name], query[name])
    adapter.check_against({k: v.shape for k, v in reference.items()})


def test_bytes_round_trip(tmp_path) -> None:
    reference, query = _states()
    adapter = extract_adapter(reference, query, bundle_id="abc", batch_categories=["lab"])
    adapter.save(tmp_path / "a.npz")
    loaded = Adapter.load(tmp_path / "a.npz")
    assert loaded.batch_categories == ("lab",)
    np.testing.assert_array_equal(loaded.tensors["enc.w"].values, adapter.tensors["enc.w"].values)
    with pytest.raises(AdapterError, match="cannot read adapter"):
        Adapter.from_bytes(b"garbage")


def test_reference_change_detected() -> None:
    reference, query = _states()
    assert check_reference_unchanged(reference, query) == []
    query["enc.w"][0, 0] = np.nextafter(query["enc.w"][0, 0], np.float32(10))
    query["dec.b"][1] += 1
    assert check_reference_unchanged(reference, query) == ["enc.w", "dec.b"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: v[:, :0], "expected"),
        (lambda v: np.full_like(v, np.nan), "non-finite"),
        (lambda v: np.zeros((5, 1), np.float32), "expected"),
    ],
)
def test_malformed_adapter_rejected(mutate, message) -> None:
    reference, query = _states()
    adapter = extract_adapter(reference, query, bundle_id="abc", batch_categories=["lab"])
    arrays, meta = adapter.to_arrays()
    bad = Adapter.from_arrays({"enc.w": mutate(arrays["enc.w"])}, meta)
    with pytest.raises(AdapterError, match=message):
        bad.check_against({k: v.shape for k, v in reference.items()})


def test_oversized_and_unknown_rejected() -> None:
    reference, query = _states()
    adapter = extract_adapter(reference, query, bundle_id="abc", batch_categories=["lab"])
    with pytest.raises(AdapterError, match="over the limit"):
        adapter.check_against({k: v.shape for k, v in reference.items()}, max_bytes=8)
    with pytest.raises(AdapterError, match="not a tensor of the reference"):
        adapter.check_against({"dec.b": (3,)})


def test_shape_change_that_is_not_growth() -> None:
    reference, _ = _states()
    with pytest.raises(AdapterError, match="changed shape"):
        extract_adapter(
            reference,
            {"enc.w": np.zeros((5, 7), np.float32), "dec.b": reference["dec.b"]},
            bundle_id="x",
            batch_categories=["a"],
        )


def test_grown_axes_names_each_grown_tensor_and_its_axis() -> None:
    reference, query = _states(2)
    shapes = {k: v.shape for k, v in reference.items()}
    assert grown_axes(shapes, {k: v.shape for k, v in query.items()}) == {"enc.w": 1}
    with pytest.raises(AdapterError, match="different tensors"):
        grown_axes(shapes, {"enc.w": (4, 8)})
    with pytest.raises(AdapterError, match="never does"):
        grown_axes(shapes, {"enc.w": (4, 5), "dec.b": (3,)})


def test_check_against_the_grown_tensors() -> None:
    reference, query = _states()
    shapes = {k: v.shape for k, v in reference.items()}
    adapter = extract_adapter(reference, query, bundle_id="abc", batch_categories=["lab"])
    adapter.check_against(shapes, grown={"enc.w": 1})
    with pytest.raises(AdapterError, match="lacks 1 tensors that surgery grows"):
        adapter.check_against({**shapes, "dec.w": (2, 2)}, grown={"enc.w": 1, "dec.w": 1})
    with pytest.raises(AdapterError, match="grows along axis 1; surgery grows it along axis 0"):
        adapter.check_against(shapes, grown={"enc.w": 0})
    extra = Adapter("abc", ("lab",), {**adapter.tensors, "dec.b": TensorSlice(np.zeros(1, np.float32), 0, 3)})
    with pytest.raises(AdapterError, match="surgery never grows"):
        extra.check_against(shapes, grown={"enc.w": 1})
    extra.check_against(shapes)  # without the grown set only shapes are checked, as before


@pytest.mark.parametrize(
    ("batches", "values", "message"),
    [
        (("lab", "lab"), None, "more than once"),
        (("",), None, "non-empty strings"),
        (("lab",), np.full((4, 1), 2e6, np.float32), "magnitude over 1e\\+06"),
        (("lab",), np.zeros((4, 1), np.int8), "non-float"),
        (("lab",), np.zeros((4, 1), np.longdouble), "non-float"),
    ],
)
def test_check_against_batches_and_values(batches, values, message) -> None:
    reference, _ = _states()
    n = len(batches)
    values = np.zeros((4, n), np.float32) if values is None else values
    adapter = Adapter("abc", batches, {"enc.w": TensorSlice(values, 1, 6)})
    with pytest.raises(AdapterError, match=message):
        adapter.check_against({k: v.shape for k, v in reference.items()}, grown={"enc.w": 1})
    Adapter("abc", ("lab",), {"enc.w": TensorSlice(np.ones((4, 1), np.float16), 1, 6)}).check_against(
        {k: v.shape for k, v in reference.items()}, grown={"enc.w": 1}
    )


@pytest.mark.parametrize(
    ("arrays", "meta", "message"),
    [
        ({}, ["format"], "must be mappings"),
        ({"w": np.zeros(1)}, {"format": "fedarches.adapter", "bundle_id": "a", "batch_categories": ["x"]}, "lacks"),
        ({"w": np.zeros(1)}, {"bundle_id": 1, "batch_categories": ["x"], "slices": {"w": {}}}, "bundle id"),
        ({"w": np.zeros(1)}, {"bundle_id": "a", "batch_categories": "x", "slices": {"w": {}}}, "list of strings"),
        ({"w": np.zeros(1)}, {"bundle_id": "a", "batch_categories": ["x"], "slices": ["w"]}, "must be a mapping"),
        ({"w": np.zeros(1)}, {"bundle_id": "a", "batch_categories": ["x"], "slices": {"w": [0, 0]}}, "exactly 'axis'"),
        (
            {"w": np.zeros(1)},
            {"bundle_id": "a", "batch_categories": ["x"], "slices": {"w": {"axis": True, "offset": 0}}},
            "non-negative integers",
        ),
        (
            {"w": [0.0]},
            {"bundle_id": "a", "batch_categories": ["x"], "slices": {"w": {"axis": 0, "offset": 0}}},
            "not an array",
        ),
    ],
)
def test_from_arrays_refuses_malformed_metadata_with_an_adapter_error(arrays, meta, message) -> None:
    if isinstance(meta, dict) and "bundle_id" in meta:
        meta = {"format": "fedarches.adapter", **meta}
    with pytest.raises(AdapterError, match=message):
        Adapter.from_arrays(arrays, meta)


def test_from_bytes_refuses_metadata_that_is_not_json() -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, w=np.zeros(1), __meta__=np.frombuffer(b"\xff{not json", dtype=np.uint8))
    with pytest.raises(AdapterError, match="not JSON"):
        Adapter.from_bytes(buffer.getvalue())
