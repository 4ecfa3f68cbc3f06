"""Open Inference Protocol tensors to and from NumPy arrays, exactly.

Three encodings arrive: JSON `data` (REST), raw little-endian bytes (REST's binary
tensor extension and gRPC's `raw_input_contents`) and gRPC's typed `contents`.
Every one is decoded to an array of the datatype's NumPy dtype or refused with
a message naming the input, the flat (row-major) index and the value: an integer
is range- and integrality-checked before any cast, INT64 and UINT64 never pass
through float64, BOOL is true/false (bytes 0/1), a float must be finite, and
BYTES are strings (JSON) or 4-byte little-endian length-prefixed elements (binary).

BYTES tensors are object arrays of `str`, the form onnxruntime takes and gives
for ONNX string tensors; BYTES elements must be UTF-8 text for that reason.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput, InvalidValue

# Datatype -> NumPy dtype, little-endian as the protocol's binary form is (BF16: NumPy has no such type).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# A float is an exact integer only below 2**53; larger ones may be rounded integers (orjson
# turns integers outside the 64-bit ranges into floats), so they are refused for integer inputs.
_EXACT_FLOAT = 2.0**53
_LENGTH = struct.Struct("<I")


def dtype_of(name: str, datatype: str) -> np.dtype:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype!r} is not one this server handles: {sorted(DTYPES)}"
        ) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind_name(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", type(None): "null", dict: "an object", list: "a list"}
    return names.get(type(value), "a number")


def element_count(name: str, shape: Sequence[int]) -> int:
    count = math.prod(shape)
    if count < 0:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return count


# -- JSON ----------------------------------------------------------------------------------------


def _flat_values(data: list[Any]) -> list[Any]:
    """Row-major leaves of nested lists (the protocol allows flat or nested data)."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _first_not(values: list[Any], kinds: tuple[type, ...], exclude_bool: bool) -> int | None:
    for i, value in enumerate(values):
        if not isinstance(value, kinds) or (exclude_bool and isinstance(value, bool)):
            return i
    return None


def _refuse_element(name: str, datatype: str, index: int, value: Any) -> InvalidValue:
    return InvalidValue(
        f"input {name!r}: data must be {datatype} values; the value at flat index {index} is "
        f"{_kind_name(value)}: {_describe(value)}"
    )


def decode_json(
    name: str, datatype: str, shape: Sequence[int], data: Any, *, may_hold_bools: bool = True
) -> np.ndarray:
    """JSON `data` (flat or nested lists) as an array of `shape` in `datatype`'s dtype.

    `may_hold_bools=False` says the caller knows no JSON true/false occurs in the data:
    NumPy alone would silently read a boolean among numbers as 1 or 0.
    """
    dtype = dtype_of(name, datatype)
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list, got {_kind_name(data)}")
    count = element_count(name, shape)
    if datatype == "BYTES":
        return _json_bytes(name, shape, data, count)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {name!r}: data is ragged; send it flat (row-major) or nested as its shape") from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} values, data has {array.size}")
    if dtype.kind == "b":
        return _json_bools(name, data, array).reshape(shape)
    if array.dtype.kind not in "iuf" or (may_hold_bools and _holds_bool(data, array)):
        values = _flat_values(data)
        index = _first_not(values, (int, float), exclude_bool=True)
        if index is not None:
            raise _refuse_element(name, datatype, index, values[index])
        # Numbers all, but integers beyond 64 bits, which NumPy keeps as objects: checked one by one below.
        array = np.array(values, dtype=object)
    if dtype.kind == "f":
        converted = _to_float(name, datatype, dtype, array.ravel().astype(np.float64, copy=False))
    else:
        converted = _to_integer(name, datatype, dtype, array.ravel(), data)
    return converted.reshape(shape)


def _holds_bool(data: list[Any], array: np.ndarray) -> bool:
    # One C-speed pass over the element types; only reached when the body may hold a boolean.
    if array.ndim == 1:
        return bool in set(map(type, data))
    return any(type(v) is bool for v in _flat_values(data))


def _json_bools(name: str, data: list[Any], array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "b":
        return array.ravel()
    values = _flat_values(data)
    index = _first_not(values, (bool,), exclude_bool=False)
    assert index is not None
    raise _refuse_element(name, "BOOL", index, values[index])


def _json_bytes(name: str, shape: Sequence[int], data: list[Any], count: int) -> np.ndarray:
    values = _flat_values(data)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} values, data has {len(values)}")
    index = _first_not(values, (str,), exclude_bool=False)
    if index is not None:
        raise _refuse_element(name, "BYTES", index, values[index])
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)


def _to_float(name: str, datatype: str, dtype: np.dtype, flat: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        converted = flat.astype(dtype, copy=False)
    finite = np.isfinite(converted)
    if not finite.all():
        index = int(np.argmin(finite))
        raise InvalidValue(
            f"input {name!r}: the value at flat index {index} is not a finite {datatype} number: "
            f"{_describe(flat[index].item())}"
        )
    return converted


def _integer_bounds(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _out_of_range(name: str, datatype: str, dtype: np.dtype, index: int, value: Any) -> InvalidValue:
    low, high = _integer_bounds(dtype)
    return InvalidValue(
        f"input {name!r}: the value at flat index {index} is out of range for {datatype} [{low}, {high}]: "
        f"{_describe(value)}"
    )


def _to_integer(name: str, datatype: str, dtype: np.dtype, flat: np.ndarray, data: list[Any]) -> np.ndarray:
    low, high = _integer_bounds(dtype)
    if flat.dtype.kind in "iu":
        # Python ints held exactly (int64, or uint64 when one is at least 2**63): compare exactly.
        if flat.size:
            bad = flat > high
            if flat.dtype.kind == "i":
                bad |= flat < low
            if bad.any():
                index = int(np.argmax(bad))
                raise _out_of_range(name, datatype, dtype, index, flat[index].item())
        return flat.astype(dtype, copy=False)
    # Some value is a float (or NumPy mixed negative and >= 2**63 integers into float64):
    # check each value as the Python number orjson gave, never through float64.
    values = _flat_values(data)
    exact: list[int] = []
    for index, value in enumerate(values):
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidValue(
                    f"input {name!r}: the value at flat index {index} is not an integer ({datatype}): "
                    f"{_describe(value)}"
                )
            if abs(value) >= _EXACT_FLOAT:
                raise InvalidValue(
                    f"input {name!r}: the value at flat index {index} is not an exact {datatype} integer "
                    f"(written as a float, or too large for JSON's 64-bit integers): {_describe(value)}"
                )
            value = int(value)
        if not low <= value <= high:
            raise _out_of_range(name, datatype, dtype, index, value)
        exact.append(value)
    return np.array(exact, dtype=dtype)


# -- binary (REST extension, gRPC raw contents) ------------------------------------------------


def decode_binary(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """Little-endian row-major bytes as an array of `shape`; the array views `raw` (no copy) except for BYTES."""
    dtype = dtype_of(name, datatype)
    count = element_count(name, shape)
    if datatype == "BYTES":
        return _binary_bytes(name, shape, raw, count)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"{len(raw)} were sent"
        )
    if dtype.kind == "b":
        octets = np.frombuffer(raw, dtype=np.uint8)
        bad = octets > 1
        if bad.any():
            index = int(np.argmax(bad))
            raise InvalidValue(
                f"input {name!r}: the BOOL at flat index {index} is byte {int(octets[index])}; BOOL bytes are 0 or 1"
            )
    array = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "f":
        _to_float(name, datatype, dtype, array)
    return array.reshape(shape)


def _binary_bytes(name: str, shape: Sequence[int], raw: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(raw)
    if count * _LENGTH.size > len(view):
        # Checked before anything is allocated for `count` elements: the shape alone is no reason to.
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} has {count} BYTES elements, but {len(view)} bytes cannot hold "
            f"their {_LENGTH.size}-byte lengths"
        )
    values = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES data ends before element {index} of {count} "
                "(each element is a 4-byte little-endian length, then that many bytes)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} declares {length} bytes, only {len(view) - offset} remain"
            )
        values[index] = _text(name, index, view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input {name!r}: {len(view) - offset} bytes left after the {count} BYTES elements")
    return values.reshape(shape)


def _text(name: str, index: int, octets: bytes | memoryview) -> str:
    try:
        return str(octets, "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue(
            f"input {name!r}: BYTES element {index} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "ONNX string tensors hold text"
        ) from None


# -- gRPC typed contents -----------------------------------------------------------------------

# Datatype -> the InferTensorContents field that carries it (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The NumPy dtype of each numeric contents field's protobuf type.
_FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}


def decode_typed(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> np.ndarray:
    """The values of a gRPC typed contents field (already of the field's protobuf type) as an array."""
    dtype = dtype_of(name, datatype)
    count = element_count(name, shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} values, contents have {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [_text(name, i, v) for i, v in enumerate(values)]
        return array.reshape(shape)
    wide = np.fromiter(values, dtype=_FIELD_DTYPES[CONTENTS_FIELD[datatype]], count=count)
    if dtype.kind == "f":
        return _to_float(name, datatype, dtype, wide).reshape(shape)
    if dtype.kind in "iu":
        # int_contents / uint_contents carry INT8, INT16, UINT8, UINT16 too: range-checked before narrowing.
        return _to_integer(name, datatype, dtype, wide, []).reshape(shape)
    return wide.reshape(shape)


# -- outputs -----------------------------------------------------------------------------------


def encode_binary(array: np.ndarray, datatype: str) -> bytes:
    """An output in the protocol's binary form: little-endian row-major, BYTES length-prefixed."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.ravel():
            octets = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts += (_LENGTH.pack(len(octets)), octets)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def json_data(array: np.ndarray, datatype: str) -> Any:
    """An output's flat `data` for orjson: the array itself for numbers, a list of strings for BYTES."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return array.ravel()
