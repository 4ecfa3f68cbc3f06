"""What the OpenAPI document says about bodies: the error every endpoint sends, /predict and V1.

The hot endpoints read their bodies themselves (no FastAPI body parameter: its per-request
validation is the cost PlainRoute avoids), so their request bodies are documented here by
`request_body`, and app.py adds the schemas it names to the document's components.
The V2 messages' schemas live with their parser in v2_messages.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .v2_messages import InferenceRequest

Row = list[float]
Prediction = float | list[Any] | dict[str, Any]


class Error(BaseModel):
    """Every 4xx and 5xx answer: one message that says what was wrong."""

    error: str


class PredictRequest(BaseModel):
    features: Row | None = Field(None, description="one row of features")
    instances: list[Row] | None = Field(None, description="several rows; answered as `predictions` in order")
    entity_id: str | None = Field(None, description="prepend this entity's features from the feature store")


class PredictResponse(BaseModel):
    prediction: Prediction | None = Field(None, description="for `features`: a number, a list, or one per output")
    predictions: list[Prediction] | None = Field(None, description="for `instances`: one per row, in order")
    model_version: str
    request_id: str | None = Field(None, description="names this prediction in POST /feedback (with feedback on)")
    latency_ms: float


class V1PredictRequest(BaseModel):
    instances: list[Row] = Field(min_length=1, description="rows of features")


class V1PredictResponse(BaseModel):
    predictions: list[Prediction]


class V1Model(BaseModel):
    name: str
    ready: bool


# Models no FastAPI route declares (bodies of plain routes): app.py adds them to the components.
DOCUMENTED_MODELS: list[type[BaseModel]] = [InferenceRequest, PredictRequest, PredictResponse, V1PredictRequest]

_MEANINGS = {
    400: "the request is malformed: the message says what is wrong",
    401: "a bearer token is required",
    404: "no such model, version or endpoint",
    405: "the endpoint does not take this method",
    413: "the body or the number of rows is over the limit",
    422: "a value cannot be used: not a number, out of range for the datatype, not finite",
    503: "not ready, draining, or the queue is full (Retry-After says when to retry)",
}


def error_responses(*codes: int, binary: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for `codes`, each with the Error body; `binary`: 200 may be the binary extension."""
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": Error, "description": _MEANINGS[code]} for code in codes
    }
    if binary:
        responses[200] = {
            "description": "JSON, or with binary outputs a JSON header of Inference-Header-Content-Length bytes "
            "followed by each binary output's binary_data_size bytes",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    return responses


def request_body(model: type[BaseModel], *, binary: bool = False) -> dict[str, Any]:
    """An `openapi_extra` documenting `model` as the JSON request body (and the binary extension's form)."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if binary:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}
