"""The seed's simple REST contract: POST /predict, GET /health, GET /stats, GET /metrics.

Not KServe's V1 protocol (that is `/v1/models/...`); the Open Inference Protocol is v2_api.py.

`{"features": [...]}` answers `{"prediction": P, ...}`; `{"instances": [[...], ...]}`
answers `{"predictions": [P, ...]}` in request order. P is a number when the
model's output row has one element, a list otherwise, and an object keyed by
output name when the model has several outputs. `entity_id` prepends the
entity's features from the online store.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from .errors import InvalidInput
from .http_io import (
    VERSION_HEADER,
    PlainRoute,
    TokenFile,
    json_response,
    parsing_process,
    read_body,
    require_bearer,
)
from .inputs import prepend, read_predict_body
from .model_server import ModelServer


def format_rows(outputs: dict[str, np.ndarray], rows: int) -> list[Any]:
    """One JSON value per row: a number, a list, or {output name: value} for several outputs."""
    if len(outputs) == 1:
        out = next(iter(outputs.values())).reshape(rows, -1)
        return out[:, 0].tolist() if out.shape[1] == 1 else out.tolist()
    columns = {name: format_rows({name: array}, rows) for name, array in outputs.items()}
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]


def build_simple_router(server: ModelServer, predict_token: TokenFile | None) -> APIRouter:
    router = APIRouter()
    settings = server.settings
    version_headers = {VERSION_HEADER: settings.model_version}

    @router.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        require_bearer(request, predict_token)
        body = await read_body(request, settings.max_body_bytes)
        model = server.require_model()
        width = model.input_width
        if width is None:
            raise InvalidInput(f"this model's input is not a feature matrix; use POST /v2/models/{settings.name}/infer")
        store = server.features
        # A model with an input width has exactly one (2-D) input.
        read = functools.partial(
            read_predict_body,
            width=width,
            dtype=model.inputs[0].dtype,
            entity_width=store.width if store is not None else None,
            max_rows=settings.max_queue,
        )
        if len(body) < settings.large_body_bytes:
            single, array, entity_id = read(body)
        else:
            single, array, entity_id = await parsing_process(request).run(read, body)
        if store is not None and entity_id is not None:
            array = prepend(await store.get(entity_id), array)
        feeds = {model.inputs[0].name: array}
        outputs = await server.infer(feeds, len(array))
        predictions = format_rows(outputs, len(array))
        answer: dict[str, Any] = {"prediction": predictions[0]} if single else {"predictions": predictions}
        answer["model_version"] = settings.model_version
        # The prediction log (--feedback-dir): queued for a background write, never waited for.
        if server.prediction_log is not None and (request_id := server.prediction_log.record(feeds, outputs)):
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
                "state": server.readiness()["state"],
                "model": settings.name,
                "model_version": settings.model_version,
            }
        )

    # /stats and /metrics describe the whole pod, whichever worker answers (pod.py).
    @router.get("/stats")
    async def stats() -> Response:
        return json_response(server.pod.stats())

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(server.pod.metrics(), media_type=CONTENT_TYPE_LATEST)

    return router
