"""The seed's simple REST contract: POST /predict, GET /health, GET /stats, GET /metrics.

Not KServe's V1 protocol (that is `/v1/models/...`); the Open Inference Protocol is v2_api.py.

`{"features": [...]}` answers `{"prediction": P, ...}`; `{"instances": [[...], ...]}`
answers `{"predictions": [P, ...]}` in request order. P is a number when the
model's output row has one element, a list otherwise, and an object keyed by
output name when the model has several outputs. `entity_id` prepends the
entity's features from the online store.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from .errors import InvalidInput
from .http_io import VERSION_HEADER, PlainRoute, json_response, read_json_object_and_body, require_bearer
from .inputs import check_entity_widths, only_numbers, payload_rows, rows_to_array
from .model_server import ModelServer


def format_rows(outputs: dict[str, np.ndarray], rows: int) -> list[Any]:
    """One JSON value per row: a number, a list, or {output name: value} for several outputs."""
    if len(outputs) == 1:
        out = next(iter(outputs.values())).reshape(rows, -1)
        return out[:, 0].tolist() if out.shape[1] == 1 else out.tolist()
    columns = {name: format_rows({name: array}, rows) for name, array in outputs.items()}
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]


async def _entity_features(server: ModelServer, entity_id: Any) -> np.ndarray:
    if server.features is None:
        raise InvalidInput("entity_id was given but this server has no feature store configured")
    if not isinstance(entity_id, str) or not entity_id:
        raise InvalidInput("entity_id must be a non-empty string")
    return await server.features.get(entity_id)


def build_simple_router(server: ModelServer, predict_token: str | None) -> APIRouter:
    router = APIRouter()
    settings = server.settings
    version_headers = {VERSION_HEADER: settings.model_version}
    keep_inputs = bool(settings.feedback_dir)

    @router.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        require_bearer(request, predict_token)
        payload, body = await read_json_object_and_body(request, settings.max_body_bytes)
        model = server.require_model()
        width = model.input_width
        if width is None:
            raise InvalidInput(f"this model's input is not a feature matrix; use POST /v2/models/{settings.name}/infer")
        prefix = await _entity_features(server, payload["entity_id"]) if "entity_id" in payload else None
        single, rows = payload_rows(
            payload,
            max_rows=settings.max_queue,
            entity=prefix is not None,
            missing="expected 'features' (one row) or 'instances' (a list of rows)",
        )
        own_width = width
        if prefix is not None:
            check_entity_widths(rows, prefix, width)
            own_width = width - prefix.shape[-1]
        # A model with an input width has exactly one (2-D) input.
        dtype = model.inputs[0].dtype
        array = rows_to_array(rows, own_width, dtype, prefix=prefix, numbers_only=only_numbers(body, payload))
        outputs = await server.infer({model.inputs[0].name: array}, len(rows))
        predictions = format_rows(outputs, len(rows))
        answer: dict[str, Any] = {"prediction": predictions[0]} if single else {"predictions": predictions}
        answer["model_version"] = settings.model_version
        if keep_inputs:
            request_id = uuid.uuid4().hex
            server.recent_inputs[request_id] = array
            answer["request_id"] = request_id
        answer["latency_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        return json_response(answer, headers=version_headers)

    # Served by the plain route; the APIRoute above stays for the OpenAPI schema (see PlainRoute).
    router.routes.insert(0, PlainRoute("/predict", predict, methods=["POST"], include_in_schema=False))

    @router.get("/health")
    async def health() -> Response:
        # Liveness: the process answers. Readiness is /v2/health/ready.
        return json_response(
            {
                "status": "healthy",
                "state": server.state.value,
                "model": settings.name,
                "model_version": settings.model_version,
            }
        )

    @router.get("/stats")
    async def stats() -> Response:
        summary = server.metrics.summary()
        summary.update(
            model=settings.name,
            model_version=settings.model_version,
            state=server.state.value,
            queue_depth=server.batcher.queued_rows if server.batcher else 0,
        )
        return json_response(summary)

    @router.get("/metrics")
    async def metrics() -> Response:
        if server.batcher is not None:
            server.metrics.queue_depth.set(server.batcher.queued_rows)
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    return router
