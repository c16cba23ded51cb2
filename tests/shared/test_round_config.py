"""What a lab reads from the coordinator's messages is checked: a malformed field is a ProtocolError, nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedarches.shared.errors import ProtocolError
from fedarches.shared.protocol import ROUND_KEYS, MapRequest, SecureSumRequest

GOOD = {
    "round-id": "round-20261202-0001",
    "bundle-id": "0123456789abcdef",
    "max-epochs": 0,
    "seed": 0,
    "confidence-threshold": 0.5,
    "min-count": 11,
    "max-adapter-bytes": 1_048_576,
}


def test_a_well_formed_round_config_is_read() -> None:
    config = MapRequest.from_record(GOOD)
    assert (config.round_id, config.bundle_id, config.min_count) == ("round-20261202-0001", "0123456789abcdef", 11)
    assert set(GOOD) == set(ROUND_KEYS)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bundle-id", "../../etc", "not a valid bundle-id"),
        ("round-id", "", "not a valid round-id"),
        ("round-id", "a/b", "not a valid round-id"),
        ("max-epochs", True, "whole number"),
        ("max-epochs", 10**12, "whole number"),
        ("seed", -1, "whole number"),
        ("min-count", 0, "whole number"),
        ("max-adapter-bytes", "1e6", "whole number"),
        ("confidence-threshold", float("nan"), "from 0 to 1"),
        ("confidence-threshold", 2, "from 0 to 1"),
    ],
)
def test_each_malformed_field_is_named(key: str, value: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        MapRequest.from_record({**GOOD, key: value})
    assert key in str(info.value) and info.value.exit_code == 46


def test_a_missing_record_or_field_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"no 'fedarches\.round' record"):
        MapRequest.from_record(None)
    with pytest.raises(ProtocolError, match="lack 'seed'"):
        MapRequest.from_record({k: v for k, v in GOOD.items() if k != "seed"})


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*ROUND_KEYS, "other"]), _values) | st.builds(lambda: GOOD))
def test_any_record_parses_or_is_a_protocol_error(record: dict) -> None:
    try:
        MapRequest.from_record(record)
    except ProtocolError:
        pass


def test_secure_sum_types_must_be_distinct_names() -> None:
    request = SecureSumRequest.from_config({"round-id": "r1", "categories": json.dumps(["T", "B"])})
    assert request == SecureSumRequest("r1", ("T", "B"))
    assert SecureSumRequest.from_config(request.to_config()) == request
    for bad in ('["T", "T"]', "[]", '["T", 1]', "{", '"T"', 7):
        with pytest.raises(ProtocolError):
            SecureSumRequest.from_config({"round-id": "r1", "categories": bad})


def test_a_request_is_checked_before_it_is_sent_and_round_trips() -> None:
    request = MapRequest.from_record(GOOD)
    assert MapRequest.from_record(request.to_record()) == request
    with pytest.raises(ProtocolError, match="min-count"):
        MapRequest(**{**request.__dict__, "min_count": 0}).to_record()
