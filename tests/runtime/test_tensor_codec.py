"""The tensor codec on its own: every value of every datatype survives each encoding exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelfleet_runtime.errors import InvalidValue
from modelfleet_runtime.tensor_codec import decode_binary, decode_json, decode_typed, encode_binary, json_data

INTEGERS = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
TYPED_FIELD_OF = {"INT8": "<i4", "INT16": "<i4", "UINT8": "<u4", "UINT16": "<u4"}


def _arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    shape = st.tuples(st.integers(1, 4), st.integers(1, 5))
    if datatype == "BOOL":
        return hnp.arrays(np.bool_, shape)
    if datatype in FLOATS:
        return hnp.arrays(FLOATS[datatype], shape, elements={"allow_nan": False, "allow_infinity": False})
    return hnp.arrays(np.dtype(datatype.lower()), shape)


@pytest.mark.parametrize("datatype", ["BOOL", *INTEGERS, *FLOATS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_binary_round_trips_every_value_exactly(datatype: str, data: st.DataObject) -> None:
    array = data.draw(_arrays(datatype))
    decoded = decode_binary("x", datatype, array.shape, encode_binary(array, datatype))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", ["BOOL", *INTEGERS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_json_integers_and_booleans_round_trip_exactly(datatype: str, data: st.DataObject) -> None:
    array = data.draw(_arrays(datatype))
    # As orjson gives them: Python ints and bools, nested by rows.
    decoded = decode_json("x", datatype, array.shape, array.tolist())
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == array.dtype


@pytest.mark.parametrize("datatype", INTEGERS)
@settings(max_examples=60, deadline=None)
@given(value=st.integers(-(2**70), 2**70))
def test_an_integer_is_accepted_exactly_when_its_datatype_holds_it(datatype: str, value: int) -> None:
    info = np.iinfo(np.dtype(datatype.lower()))
    if info.min <= value <= info.max:
        assert decode_json("x", datatype, [1], [value])[0] == value
    else:
        with pytest.raises(InvalidValue, match="out of range"):
            decode_json("x", datatype, [1], [value])


@pytest.mark.parametrize("datatype", list(TYPED_FIELD_OF))
@settings(max_examples=60, deadline=None)
@given(value=st.integers(0, 2**32 - 1))
def test_narrow_integers_in_wide_grpc_fields_are_range_checked(datatype: str, value: int) -> None:
    wide = int(np.array(value, dtype=np.uint32).astype(TYPED_FIELD_OF[datatype]))
    info = np.iinfo(np.dtype(datatype.lower()))
    if info.min <= wide <= info.max:
        assert decode_typed("x", datatype, [1], [wide])[0] == wide
    else:
        with pytest.raises(InvalidValue, match="out of range"):
            decode_typed("x", datatype, [1], [wide])


def test_strings_round_trip_through_binary_and_json() -> None:
    words = np.array([["", "émeu"], ["a\x00b", "🦤" * 3]], dtype=object)
    assert decode_binary("x", "BYTES", [2, 2], encode_binary(words, "BYTES")).tolist() == words.tolist()
    assert decode_json("x", "BYTES", [2, 2], json_data(words, "BYTES")).tolist() == words.tolist()
