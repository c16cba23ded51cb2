from __future__ import annotations

import numpy as np
import pytest

from fedarches.shared.adapters import Adapter, apply_adapters, check_reference_unchanged, extract_adapter
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
