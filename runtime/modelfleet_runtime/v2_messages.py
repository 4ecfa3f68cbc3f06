"""Open Inference Protocol (KServe V2) REST messages: a lean parser and the documented schemas.

`parse_request` checks the structure of an inference request (as orjson parsed it)
and returns typed dataclasses without touching the tensors' `data`: the values are
checked and converted once, by tensor_codec, straight into the model's dtype (a
pydantic pass over every element of a large `data` list cost more than the model run).
The pydantic models below describe the same messages for the OpenAPI document and
build the metadata answers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput, RuntimeProblem
from .inputs import parse_json
from .tensor_codec import decode_json

NOT_OIP = "not an Open Inference Protocol request"


@dataclass(frozen=True)
class ParsedInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any]
    # The JSON `data` as orjson gave it; None when the tensor travels as binary.
    data: Any
    # `parameters.binary_data_size`: the tensor's bytes after the JSON header (binary extension).
    binary_size: int | None


@dataclass(frozen=True)
class ParsedOutput:
    name: str
    # `parameters.binary_data`; None when the request does not say.
    binary: bool | None


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[ParsedInput]
    outputs: list[ParsedOutput] | None
    # `parameters.binary_data_output`: every output in binary unless it says otherwise.
    binary_output: bool

    def wants_binary(self, output: str) -> bool:
        for requested in self.outputs or ():
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output


def _problem(where: str, what: str) -> InvalidInput:
    return InvalidInput(f"{NOT_OIP}: {where}: {what}")


def _parameters(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _problem(f"{where}.parameters", "must be an object")
    return value


def _flag(where: str, parameters: dict[str, Any], key: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise _problem(f"{where}.parameters.{key}", f"must be true or false, got {value!r}")
    return value


def _name(where: str, item: dict[str, Any]) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _problem(f"{where}.name", "a non-empty string is required")
    return name


def _dimension(d: Any) -> int | None:
    """An integer, or a float of integral value (JSON does not tell 3 from 3.0); None otherwise."""
    if isinstance(d, int) and not isinstance(d, bool):
        return d
    if isinstance(d, float) and d.is_integer():
        return int(d)
    return None


def _shape(where: str, value: Any) -> tuple[int, ...]:
    dims = [_dimension(d) for d in value] if isinstance(value, list) else [None]
    if not all(d is not None for d in dims):
        raise _problem(f"{where}.shape", f"must be a list of integers, got {value!r}")
    value = dims
    if any(d < 0 for d in value):
        raise _problem(f"{where}.shape", f"dimensions must not be negative, got {value}")
    return tuple(value)


def _input(index: int, item: Any) -> ParsedInput:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise _problem(where, "must be an object")
    name = _name(where, item)
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise _problem(f"{where}.datatype", "a string is required (FP32, INT64, BYTES, ...)")
    shape = _shape(where, item.get("shape"))
    parameters = _parameters(where, item.get("parameters"))
    size = parameters.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _problem(f"{where}.parameters.binary_data_size", f"must be a byte count, got {size!r}")
    data = item.get("data")
    if data is None and size is None:
        raise _problem(where, f"input {name!r} has no 'data' (or binary data with parameters.binary_data_size)")
    if data is not None and size is not None:
        raise _problem(where, f"input {name!r} has both 'data' and parameters.binary_data_size; send one")
    return ParsedInput(name, datatype, shape, parameters, data, size)


def _output(index: int, item: Any) -> ParsedOutput:
    where = f"outputs[{index}]"
    if not isinstance(item, dict):
        raise _problem(where, "must be an object")
    return ParsedOutput(_name(where, item), _flag(where, _parameters(where, item.get("parameters")), "binary_data"))


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _problem(kind, f"{kind[:-1]} {name!r} is given twice")
        seen.add(name)


def parse_request(payload: Any) -> ParsedRequest:
    """The inference request in `payload` (parsed JSON), or InvalidInput saying what is wrong with it."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"{NOT_OIP}: the body must be a JSON object, got {type(payload).__name__}")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _problem("id", f"must be a string, got {request_id!r}")
    parameters = _parameters("request", payload.get("parameters"))
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _problem("inputs", "a non-empty list of input tensors is required")
    inputs = [_input(i, item) for i, item in enumerate(raw_inputs)]
    _unique("inputs", [i.name for i in inputs])
    raw_outputs = payload.get("outputs")
    outputs = None
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _problem("outputs", "must be a list of requested outputs")
        outputs = [_output(i, item) for i, item in enumerate(raw_outputs)]
        _unique("outputs", [o.name for o in outputs])
    binary_output = _flag("request", parameters, "binary_data_output") or False
    return ParsedRequest(request_id, parameters, inputs, outputs, binary_output)


# -- schemas (OpenAPI) and metadata answers ----------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


Parameters = dict[str, Any]
TensorData = list[Any]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]


class InputParameters(_Message):
    model_config = ConfigDict(extra="allow")
    binary_data_size: int | None = Field(
        None, ge=0, description="this tensor's byte count after the JSON header (binary extension); then no data"
    )


class OutputParameters(_Message):
    model_config = ConfigDict(extra="allow")
    binary_data: bool | None = Field(None, description="true: this output in binary after the JSON header")


class RequestParameters(_Message):
    model_config = ConfigDict(extra="allow")
    binary_data_output: bool | None = Field(None, description="true: every output in binary unless it says otherwise")
    entity_ids: list[str] | None = Field(None, description="one feature-store entity per row (a 2-D feature input)")


class RequestInput(_Message):
    name: str = Field(min_length=1)
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="dimensions; the first one is the batch (rows)")
    datatype: Datatype
    parameters: InputParameters | None = None
    data: TensorData | None = Field(None, description="row-major values, flat or nested; absent for binary tensors")


class RequestOutput(_Message):
    name: str = Field(min_length=1)
    parameters: OutputParameters | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size when the output follows in binary")
    data: TensorData | None = Field(None, description="row-major values; absent for binary outputs")


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(_Message):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Message):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Message):
    name: str
    version: str
    extensions: list[str]


# -- reading a request's JSON -----------------------------------------------------------------


def parse_json_header(header: bytes) -> Any:
    """The request's JSON (the whole body, or the header before binary tensor data)."""
    try:
        return parse_json(header)
    except InvalidInput as exc:
        if "content after document" in exc.message or "trailing" in exc.message:
            raise InvalidInput(
                f"{exc.message}: binary tensor data after the JSON needs the Inference-Header-Content-Length "
                "header (the JSON's length in bytes)"
            ) from None
        raise


_T, _F = ord("t"), ord("f")
# Below this many bytes, bytes.count is cheaper than NumPy's per-call overhead (about 10 x on a one-row
# request); above it, NumPy's vectorised compare is (bytes.count of one letter is not vectorised).
_SMALL_TEXT = 4096


def _letters_t_f(text: bytes) -> int:
    if len(text) < _SMALL_TEXT:
        return text.count(b"t") + text.count(b"f")
    octets = np.frombuffer(text, dtype=np.uint8)
    return int(np.count_nonzero(octets == _T) + np.count_nonzero(octets == _F))


def data_may_hold_bools(header: bytes, payload: dict[str, Any]) -> bool:
    """False when no JSON true/false can be among the inputs' data, which NumPy would read as 1/0.

    Numbers and lists never hold a "t" or an "f", and without a backslash in the body every
    string is written as orjson writes it: when the body holds no more of those letters than
    the request without its data, none is in the data. Two vectorised counts over the bytes
    instead of a type check of every value.
    """
    if b"\\" in header:
        return True
    inputs = [{**i, "data": []} if "data" in i else i for i in payload["inputs"]]
    skeleton = orjson.dumps({**payload, "inputs": inputs})
    return _letters_t_f(header) != _letters_t_f(skeleton)


def decode_json_request(header: bytes) -> tuple[ParsedRequest, list[np.ndarray | RuntimeProblem]]:
    """Parse a JSON-only request and decode every input's data: the work done off the event loop
    (in the parsing process, http_io.ParsingProcess) for a large body.

    Only the arrays cross back, not the numbers as Python objects; a tensor's problem comes back
    in its place, to be raised when the endpoint decodes it (after its checks against the model).
    """
    payload = parse_json_header(header)
    message = parse_request(payload)
    may_hold_bools = data_may_hold_bools(header, payload)
    arrays: list[np.ndarray | RuntimeProblem] = []
    for given in message.inputs:
        try:
            arrays.append(
                decode_json(given.name, given.datatype, given.shape, given.data, may_hold_bools=may_hold_bools)
            )
        except RuntimeProblem as problem:
            arrays.append(problem)
    inputs = [dataclasses.replace(given, data=None) for given in message.inputs]
    return dataclasses.replace(message, inputs=inputs), arrays
