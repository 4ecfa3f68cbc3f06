"""Wires the ModelServer, the protocol routers and the error mapping into one ASGI app.

Every error leaves as `{"error": message}` and is mapped here, and nowhere else:
a RuntimeProblem with its status code (and `Retry-After` when set), the framework's
own 404 and 405, a request FastAPI could not validate, and anything unexpected (500).
The OpenAPI document (/openapi.json) names that error body, not FastAPI's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from . import __version__
from .api_schema import DOCUMENTED_MODELS, PredictRequest, PredictResponse, error_responses, request_body
from .errors import RuntimeProblem
from .feedback_api import FeedbackService, build_feedback_router
from .http_io import ParsingProcess, client_gone, json_response, read_token
from .metrics import REJECTED_KEY, MetricsMiddleware
from .model_server import ModelServer
from .settings import Settings
from .simple_api import build_simple_router
from .v1_api import build_v1_router
from .v2_api import build_v2_router

log = logging.getLogger("modelfleet.app")

_V2_SCOPE = (
    "this server implements the Open Inference Protocol's health, metadata and infer endpoints and Triton's "
    "binary tensor extension; Triton's model configuration, repository, statistics, trace, logging and "
    "shared-memory extensions are not implemented"
)


def _not_found(request: Request) -> str:
    path = request.url.path
    where = f"no endpoint {request.method} {path}"
    if path.startswith("/v2/"):
        return f"{where}: {_V2_SCOPE}"
    return f"{where} on this server; /docs lists the endpoints"


def _framework_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = _not_found(request)
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    else:
        message = str(exc.detail)
    return json_response({"error": message}, status=exc.status_code, headers=dict(exc.headers or {}))


def _validation_error(exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
        for e in exc.errors()[:5]
    )
    return json_response({"error": f"invalid request: {problems}"}, status=400)


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _error_responses(*codes: int) -> dict[str, Any]:
    return {
        str(code): {"description": r["description"], "content": _ref("Error")}
        for code, r in error_responses(*codes).items()
    }


def _document_other_modules_routes(paths: dict[str, Any]) -> None:
    """Bodies of routes declared without a FastAPI body parameter in simple_api.py and feedback_api.py."""
    predict = paths["/predict"]["post"]
    predict.update(request_body(PredictRequest))
    predict["responses"] = {"200": {"description": "the prediction", "content": _ref(PredictResponse.__name__)}}
    predict["responses"].update(_error_responses(400, 401, 404, 413, 422, 503))
    feedback = paths["/feedback"]["post"]
    feedback["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "features or entity_id, label, request_id"}
            }
        },
    }
    feedback["responses"].update(_error_responses(400, 401, 404, 413, 422, 503))
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the bodies read by plain routes added and its validation error replaced by ours."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in DOCUMENTED_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    _document_other_modules_routes(document["paths"])
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                del responses["422"]
                responses.update({k: v for k, v in _error_responses(400).items() if k not in responses})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = document
    return document


def create_app(settings: Settings, server: ModelServer | None = None) -> FastAPI:
    server = server or ModelServer(settings)
    predict_token = read_token(settings.predict_token_file)
    feedback = FeedbackService(server, server.registry)
    parsing = ParsingProcess(server.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        grpc_server = None
        try:
            if settings.grpc_port:
                from .grpc_api import GrpcServer  # grpcio only loads when gRPC is on

                # Every worker of a pod serves the same gRPC port (gRPC cannot take an inherited socket).
                grpc_server = GrpcServer(
                    server, predict_token, settings.host, settings.grpc_port, reuse_port=settings.workers > 1
                )
                await grpc_server.start()
            yield
        finally:
            # gRPC calls in flight finish (within the drain timeout) before the batcher closes.
            if grpc_server is not None:
                await grpc_server.stop()
            await server.stop()
            await feedback.aclose()
            parsing.close()

    app = FastAPI(
        title="ModelFleet runtime",
        version=__version__,
        description="Batching ONNX inference: /predict, KServe V1, the Open Inference Protocol (V2) with Triton's "
        'binary tensor extension; every error is {"error": message}.',
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.server = server
    app.state.parsing = parsing
    # The routes go straight onto the app: this FastAPI matches an included router's routes twice
    # per request (about a tenth of a small prediction's event-loop time, see bench/README.md).
    for router in (
        build_simple_router(server, predict_token),
        build_v2_router(server, predict_token),
        build_v1_router(server, predict_token),
        build_feedback_router(server, feedback),
    ):
        app.router.routes.extend(router.routes)

    @app.exception_handler(RuntimeProblem)
    async def problem(request: Request, exc: RuntimeProblem) -> Response:
        if exc.rejected is not None:
            request.scope[REJECTED_KEY] = exc.rejected
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return json_response({"error": exc.message}, status=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def framework(request: Request, exc: HTTPException) -> Response:
        return _framework_error(request, exc)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, _: ClientDisconnect) -> Response:
        # A body read outside http_io.read_body (FastAPI's own parameter parsing) can meet it too.
        problem = client_gone(request)
        return json_response({"error": problem.message}, status=problem.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_response(
            {"error": f"internal server error ({type(exc).__name__}); the server log has the details"}, status=500
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app
