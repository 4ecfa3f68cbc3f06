"""KServe's V1 protocol over the same core as /predict.

`GET /` is liveness (`{"status": "alive"}`, what KServe's client reads),
`GET /v1/models` lists the model, `GET /v1/models/{name}` answers
`{"name", "ready"}` (503 until the model is loaded and warmed up, as KServe's
server does), and `POST /v1/models/{name}:predict` takes `{"instances": [row, ...]}`
and answers `{"predictions": [P, ...]}` in request order, P shaped as /predict's.
"""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from starlette.responses import Response

from .api_schema import V1Model, V1PredictRequest, V1PredictResponse, error_responses, request_body
from .errors import InvalidInput, Unavailable
from .http_io import VERSION_HEADER, PlainRoute, TokenFile, json_response, parsing_process, read_body, require_bearer
from .inputs import read_instances_body
from .model_server import ModelServer
from .simple_api import format_rows


def build_v1_router(server: ModelServer, predict_token: TokenFile | None) -> APIRouter:
    router = APIRouter(tags=["KServe V1"])
    settings = server.settings
    version_headers = {VERSION_HEADER: settings.model_version}

    @router.get("/")
    async def alive() -> Response:
        return json_response({"status": "alive"})

    @router.get("/v1/models")
    async def models() -> Response:
        return json_response({"models": [settings.name]})

    @router.get("/v1/models/{name}", response_model=V1Model, responses=error_responses(404, 503))
    async def model_ready(name: str) -> Response:
        server.check_target(name)
        if not server.ready:
            raise Unavailable(f"model {name!r} is not ready: {server.reason}", retry_after=1)
        return json_response({"name": settings.name, "ready": True})

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        server.check_target(name)
        require_bearer(request, predict_token)
        body = await read_body(request, settings.max_body_bytes)
        model = server.require_model()
        width = model.input_width
        if width is None:
            raise InvalidInput(
                f"V1 instances need a model with one 2-D numeric input; use POST /v2/models/{settings.name}/infer"
            )
        read = functools.partial(
            read_instances_body, width=width, dtype=model.inputs[0].dtype, max_rows=settings.max_queue
        )
        array = read(body) if len(body) < settings.large_body_bytes else await parsing_process(request).run(read, body)
        rows = len(array)
        outputs = await server.infer({model.inputs[0].name: array}, rows)
        return json_response({"predictions": format_rows(outputs, rows)}, headers=version_headers)

    @router.post(
        "/v1/models/{name}:predict",
        response_model=V1PredictResponse,
        responses=error_responses(400, 401, 404, 413, 422, 503),
        openapi_extra=request_body(V1PredictRequest),
    )
    async def documented_predict(request: Request, name: str) -> Response:
        return await predict(request)

    # Served by the plain route; the APIRoute above stays for the OpenAPI schema (see PlainRoute).
    router.routes.insert(0, PlainRoute("/v1/models/{name}:predict", predict, methods=["POST"], include_in_schema=False))
    return router
