"""Wires the ModelServer, the protocol routers and the error mapping into one ASGI app.

Every RuntimeProblem becomes `{"error": message}` with its status code here,
and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from . import __version__
from .errors import RuntimeProblem
from .feedback_api import FeedbackService, build_feedback_router
from .http_io import json_response, read_token
from .metrics import MetricsMiddleware, RuntimeMetrics
from .model_server import ModelServer
from .settings import Settings
from .simple_api import build_simple_router
from .v2_api import build_v2_router

log = logging.getLogger("modelfleet.app")


def create_app(settings: Settings, server: ModelServer | None = None) -> FastAPI:
    server = server or ModelServer(settings, RuntimeMetrics())
    predict_token = read_token(settings.predict_token_file)
    feedback = FeedbackService(settings.feedback_dir, settings.feedback_segment_bytes, server.registry)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()
            await feedback.aclose()

    app = FastAPI(title="ModelFleet runtime", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = server
    # The routes go straight onto the app: this FastAPI matches an included router's routes twice
    # per request (about a tenth of a small prediction's event-loop time, see bench/README.md).
    for router in (
        build_simple_router(server, predict_token),
        build_v2_router(server, predict_token),
        build_feedback_router(server, feedback),
    ):
        app.router.routes.extend(router.routes)

    @app.exception_handler(RuntimeProblem)
    async def problem(_: Request, exc: RuntimeProblem) -> Response:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return json_response({"error": exc.message}, status=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": f"invalid request: {exc.errors()[:3]}"}, status=400)

    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app
