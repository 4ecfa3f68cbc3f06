"""Open Inference Protocol (KServe V2) REST messages as pydantic models."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInput


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    # Row-major data, flat or nested as the protocol allows.
    data: list[Any]


class RequestOutput(_Message):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Message):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
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


def parse_request(body: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInput(f"not an Open Inference Protocol request: {problems}") from None


def parse_request_with_arrays(body: bytes) -> InferenceRequest:
    """`parse_request`, with each input's rectangular data already a numpy array.

    For a large body parsed in the parsing process (http_io.ParsingProcess): the answer
    crosses back as one copy of each array instead of every number as a Python object.
    Ragged data stays a list, for the endpoint to name the problem.
    """
    message = parse_request(body)
    for tensor in message.inputs:
        try:
            array = np.asarray(tensor.data)
        except (ValueError, TypeError):
            continue
        if array.dtype != object:
            # Not validated again: the endpoint reads `data` with np.asarray, which takes either.
            tensor.data = array  # type: ignore[assignment]
    return message
