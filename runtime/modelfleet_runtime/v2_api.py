"""Open Inference Protocol (KServe V2) REST endpoints over the same ModelServer.

Health: /v2/health/live, /v2/health/ready (the model's real state, 503 with the
reason until it is loaded and warmed up). Model: /v2/models/{name}[/versions/{v}]
metadata, ready and infer. A name or version this server does not serve is a
404 that names what it does serve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from . import __version__
from .errors import InvalidInput, InvalidValue, PayloadTooLarge
from .http_io import VERSION_HEADER, PlainRoute, json_response, read_body, require_bearer
from .model import OnnxModel, TensorSpec
from .model_server import ModelServer
from .v2_messages import InferenceRequest, ModelMetadata, RequestInput, ServerMetadata, TensorMetadata

_NUMPY_OF = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


def _tensor(spec: TensorSpec, given: RequestInput, rows: int | None) -> np.ndarray:
    if given.datatype != spec.datatype:
        raise InvalidInput(f"input {spec.name!r}: datatype {given.datatype!r} given, the model takes {spec.datatype!r}")
    shape = given.shape
    if (
        len(shape) != len(spec.shape)
        or any(d is not None and d != g for d, g in zip(spec.shape, shape, strict=True))
        or any(g < 0 for g in shape)
    ):
        expected = [-1 if d is None else d for d in spec.shape]
        raise InvalidInput(f"input {spec.name!r}: shape {shape} given, the model takes {expected}")
    if rows is not None and shape[0] != rows:
        raise InvalidInput(f"input {spec.name!r} has {shape[0]} rows; the other inputs have {rows}")
    try:
        array = np.asarray(given.data)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"input {spec.name!r}: data is ragged; send it flat (row-major) or as nested lists"
        ) from None
    if array.size != math.prod(shape):
        raise InvalidInput(f"input {spec.name!r}: shape {shape} needs {math.prod(shape)} values, data has {array.size}")
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "b") != (spec.dtype.kind == "b"):
        raise InvalidValue(f"input {spec.name!r}: data must be {spec.datatype} values")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(spec.dtype, copy=False).reshape(shape)
    if spec.dtype.kind == "f" and not np.isfinite(converted).all():
        raise InvalidValue(f"input {spec.name!r}: data holds a value that is not a finite {spec.datatype} number")
    return converted


def _parse_request(body: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInput(f"not an Open Inference Protocol request: {problems}") from None


def _entity_ids(message: InferenceRequest, model: OnnxModel) -> Any:
    """`parameters.entity_ids` (or one `entity_id`) as sent, None when the request names no entity."""
    params = message.parameters or {}
    entity_ids = params.get("entity_ids") or ([params["entity_id"]] if "entity_id" in params else None)
    if entity_ids is not None and model.input_width is None:
        raise InvalidInput("entity_id needs a model with one 2-D feature input")
    return entity_ids


def _check_input_names(model: OnnxModel, given: Mapping[str, RequestInput]) -> None:
    """The request sends exactly the model's inputs, by name."""
    specs = {s.name for s in model.inputs}
    missing, unknown = sorted(specs - given.keys()), sorted(given.keys() - specs)
    if unknown or missing:
        problems = ([f"unknown inputs {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []
        )
        raise InvalidInput(f"{'; '.join(problems)}; the model takes {[s.name for s in model.inputs]}")


async def _feeds(
    server: ModelServer, model: OnnxModel, given: Mapping[str, RequestInput], entity_ids: Any
) -> tuple[dict[str, np.ndarray], int]:
    """The model's feeds and their common number of rows."""
    feeds: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in model.inputs:
        if entity_ids is not None:
            feeds[spec.name] = await _with_entities(server, spec, given[spec.name], entity_ids)
        else:
            feeds[spec.name] = _tensor(spec, given[spec.name], rows)
        rows = feeds[spec.name].shape[0]
    assert rows is not None  # a model has at least one input
    return feeds, rows


def _output_names(message: InferenceRequest, model: OnnxModel) -> list[str]:
    """The outputs the request asks for, in its order; all of the model's when it names none."""
    wanted = [o.name for o in message.outputs] if message.outputs else None
    if not wanted:
        return model.output_names
    unknown = sorted(set(wanted) - set(model.output_names))
    if unknown:
        raise InvalidInput(f"outputs {unknown} unknown; the model has {model.output_names}")
    return wanted


def _output_tensors(model: OnnxModel, outputs: Mapping[str, np.ndarray], names: list[str]) -> list[dict[str, Any]]:
    by_spec = {o.name: o for o in model.outputs}
    return [
        {"name": n, "datatype": by_spec[n].datatype, "shape": list(outputs[n].shape), "data": outputs[n].ravel()}
        for n in names
    ]


def build_v2_router(server: ModelServer, predict_token: str | None) -> APIRouter:
    router = APIRouter(prefix="/v2")
    _add_server_routes(router, server)
    _add_model_routes(router, server)
    _add_infer_routes(router, server, predict_token)
    return router


def _ready_response(server: ModelServer) -> Response:
    return json_response(server.readiness(), status=200 if server.ready else 503)


def _add_server_routes(router: APIRouter, server: ModelServer) -> None:
    """Server metadata, liveness and readiness."""

    @router.get("")
    async def server_metadata() -> Response:
        return json_response(ServerMetadata(name="modelfleet", version=__version__, extensions=[]).model_dump())

    @router.get("/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready")
    async def ready() -> Response:
        return _ready_response(server)


def _add_model_routes(router: APIRouter, server: ModelServer) -> None:
    """The model's metadata and readiness, by name and by name and version."""
    settings = server.settings

    def metadata(name: str, version: str | None) -> Response:
        server.check_target(name, version)
        model = server.require_model()
        meta = ModelMetadata(
            name=settings.name,
            versions=[settings.model_version],
            platform="onnxruntime_onnx",
            inputs=[TensorMetadata(**t.metadata()) for t in model.inputs],
            outputs=[TensorMetadata(**t.metadata()) for t in model.outputs],
        )
        return json_response(meta.model_dump())

    @router.get("/models/{name}")
    async def model_metadata(name: str) -> Response:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        server.check_target(name)
        return _ready_response(server)

    @router.get("/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> Response:
        server.check_target(name, version)
        return _ready_response(server)


def _add_infer_routes(router: APIRouter, server: ModelServer, predict_token: str | None) -> None:
    """Inference by name and by name and version, served by plain routes ahead of the APIRoutes (see PlainRoute)."""
    settings = server.settings
    version_headers = {VERSION_HEADER: settings.model_version}

    async def infer(request: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        server.check_target(name, version)
        require_bearer(request, predict_token)
        message = _parse_request(await read_body(request, settings.max_body_bytes))
        model = server.require_model()
        given = {i.name: i for i in message.inputs}
        entity_ids = _entity_ids(message, model)
        _check_input_names(model, given)
        feeds, rows = await _feeds(server, model, given, entity_ids)
        if rows > settings.max_queue:
            raise PayloadTooLarge(f"{rows} rows in one request; the limit is {settings.max_queue}")
        names = _output_names(message, model)
        outputs = await server.infer(feeds, rows)
        answer: dict[str, Any] = {
            "model_name": settings.name,
            "model_version": settings.model_version,
            "outputs": _output_tensors(model, outputs, names),
        }
        if message.id is not None:
            answer["id"] = message.id
        answer["parameters"] = {"latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        return json_response(answer, headers=version_headers)

    @router.post("/models/{name}/infer")
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @router.post("/models/{name}/versions/{version}/infer")
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    async def plain_model_infer(request: Request) -> Response:
        return await infer(request, request.path_params["name"], None)

    async def plain_version_infer(request: Request) -> Response:
        return await infer(request, request.path_params["name"], request.path_params["version"])

    router.routes[:0] = [
        PlainRoute("/v2/models/{name}/infer", plain_model_infer, methods=["POST"], include_in_schema=False),
        PlainRoute(
            "/v2/models/{name}/versions/{version}/infer", plain_version_infer, methods=["POST"], include_in_schema=False
        ),
    ]


async def _with_entities(server: ModelServer, spec: TensorSpec, given: RequestInput, entity_ids: Any) -> np.ndarray:
    """The request's own feature columns with each row's entity features placed before them."""
    if not isinstance(entity_ids, list) or not all(isinstance(e, str) and e for e in entity_ids):
        raise InvalidInput("parameters.entity_id must be a string (entity_ids: a list of strings)")
    if server.features is None:
        raise InvalidInput("entity_id was given but this server has no feature store configured")
    prefixes = await server.features.get_many(entity_ids)
    width = spec.shape[1]
    assert width is not None
    own = width - prefixes[0].shape[-1]
    if given.shape != [len(entity_ids), own]:
        raise InvalidInput(
            f"input {spec.name!r}: with {len(entity_ids)} entities of {prefixes[0].shape[-1]} "
            f"features, shape must be [{len(entity_ids)}, {own}] (the model takes {width}), "
            f"got {given.shape}"
        )
    own_spec = TensorSpec(spec.name, spec.dtype, spec.datatype, (None, own))
    array = _tensor(own_spec, given, None)
    return np.concatenate([np.stack(prefixes).astype(spec.dtype, copy=False), array], axis=1)
