"""Open Inference Protocol (KServe V2) REST messages as pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
