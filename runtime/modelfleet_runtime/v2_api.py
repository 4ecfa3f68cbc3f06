"""Open Inference Protocol (KServe V2) REST endpoints, with Triton's binary tensor extension.

Health: /v2/health/live, /v2/health/ready (the model's real state, 503 with the
reason until it is loaded and warmed up). Model: /v2/models/{name}[/versions/{v}]
metadata, ready and infer. A name or version this server does not serve is a
404 that names what it does serve.

Infer takes JSON, or the binary extension: a JSON header of
`Inference-Header-Content-Length` bytes followed by each binary input's
`parameters.binary_data_size` bytes, in input order (a header length of 0: the
whole body is the only input, as Triton's raw binary request). Outputs are JSON,
or binary after the JSON header when `binary_data` (per output) or
`binary_data_output` (all) asks. Bodies may be gzip or deflate (Content-Encoding);
answers are compressed when Accept-Encoding asks and they are large enough.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from . import __version__
from .api_schema import error_responses, request_body
from .content_coding import COMPRESS_MIN_BYTES, accepted_coding, decode_body, encode_body
from .errors import InvalidInput, RuntimeProblem
from .http_io import (
    JSON,
    VERSION_HEADER,
    PlainRoute,
    TokenFile,
    json_response,
    parsing_process,
    read_body,
    require_bearer,
)
from .model import OnnxModel
from .model_server import ModelServer
from .tensor_codec import decode_binary, decode_json, encode_binary, json_data
from .v2_infer import InputTensor, datatypes, entity_ids_of, infer, output_names
from .v2_messages import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ParsedInput,
    ParsedRequest,
    ServerMetadata,
    TensorMetadata,
    data_may_hold_bools,
    decode_json_request,
    parse_json_header,
    parse_request,
)

HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]


# -- request ---------------------------------------------------------------------------------


def _split(body: bytes, declared: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it."""
    if declared is None:
        return body, memoryview(b"")
    try:
        length = int(declared)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length is not a number: {declared!r}") from None
    if not 0 <= length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _tensors(message: ParsedRequest, binary: memoryview, may_hold_bools: bool) -> list[InputTensor]:
    tensors, offset = [], 0
    for given in message.inputs:
        decode: Any
        if given.binary_size is not None:
            if offset + given.binary_size > len(binary):
                raise InvalidInput(
                    f"input {given.name!r}: binary_data_size {given.binary_size} runs past the end of the "
                    f"{len(binary)} bytes of binary data after the JSON header"
                )
            raw = binary[offset : offset + given.binary_size]
            offset += given.binary_size
            decode = functools.partial(decode_binary, given.name, given.datatype, given.shape, raw)
        else:
            decode = functools.partial(
                decode_json, given.name, given.datatype, given.shape, given.data, may_hold_bools=may_hold_bools
            )
        tensors.append(InputTensor(given.name, given.datatype, given.shape, decode))
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary)} bytes of binary data follow the JSON header, but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return tensors


def _decoded(array: np.ndarray | RuntimeProblem) -> np.ndarray:
    if isinstance(array, RuntimeProblem):
        raise array
    return array


def _raw_request(model: OnnxModel, body: memoryview) -> tuple[ParsedRequest, list[InputTensor]]:
    """Triton's raw binary request: the whole body is the one input, of one row for a batched model."""
    spec = model.single_input
    if spec is None:
        raise InvalidInput("a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input")
    if spec.datatype == "BYTES":
        shape: tuple[int, ...] = (1,) * len(spec.shape)
    else:
        per_row = int(np.prod([d for d in spec.row_shape if d is not None], dtype=np.int64))
        rows, left = divmod(len(body), per_row * spec.dtype.itemsize)
        if left or not rows:
            raise InvalidInput(
                f"a raw binary request of {len(body)} bytes is not a whole number of rows of input {spec.name!r} "
                f"({per_row} {spec.datatype} values each)"
            )
        shape = (rows, *(d for d in spec.row_shape if d is not None))
    decode = functools.partial(decode_binary, spec.name, spec.datatype, shape, body)
    message = ParsedRequest(None, {}, [ParsedInput(spec.name, spec.datatype, shape, {}, None, len(body))], None, True)
    return message, [InputTensor(spec.name, spec.datatype, shape, decode)]


# -- answer ----------------------------------------------------------------------------------


def _encode_answer(
    message: ParsedRequest,
    head: dict[str, Any],
    outputs: dict[str, np.ndarray],
    names: list[str],
    types: dict[str, str],
) -> tuple[bytes, int | None]:
    """The answer's bytes and, when binary outputs follow the JSON, the JSON's length."""
    tensors, buffers = [], []
    for name in names:
        array, datatype = outputs[name], types[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if message.wants_binary(name):
            raw = encode_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            tensor["data"] = json_data(array, datatype)
        tensors.append(tensor)
    head["outputs"] = tensors
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)


async def _respond(request: Request, body: bytes, header_length: int | None, headers: dict[str, str]) -> Response:
    headers = dict(headers)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    if len(body) >= COMPRESS_MIN_BYTES:
        headers["Vary"] = "Accept-Encoding"
        coding = accepted_coding(request.headers.get("accept-encoding"))
        if coding is not None:
            body = await encode_body(body, coding)
            headers["Content-Encoding"] = coding
    return Response(body, headers=headers, media_type=BINARY if header_length is not None else JSON)


# -- routes ----------------------------------------------------------------------------------


def build_v2_router(server: ModelServer, predict_token: TokenFile | None) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
    _add_server_routes(router, server)
    _add_model_routes(router, server)
    _add_infer_routes(router, server, predict_token)
    return router


def _ready_response(server: ModelServer) -> Response:
    body = server.readiness()
    return json_response(body, status=200 if body["ready"] else 503)


def _add_server_routes(router: APIRouter, server: ModelServer) -> None:
    """Server metadata, liveness and readiness."""

    @router.get("", response_model=ServerMetadata)
    async def server_metadata() -> Response:
        return json_response(ServerMetadata(name="modelfleet", version=__version__, extensions=EXTENSIONS).model_dump())

    @router.get("/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready", responses={503: {"description": "not ready: the reason"}})
    async def ready() -> Response:
        return _ready_response(server)


def model_metadata(server: ModelServer) -> ModelMetadata:
    settings, model = server.settings, server.require_model()
    return ModelMetadata(
        name=settings.name,
        versions=[settings.model_version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(**t.metadata()) for t in model.inputs],
        outputs=[TensorMetadata(**t.metadata()) for t in model.outputs],
    )


def _add_model_routes(router: APIRouter, server: ModelServer) -> None:
    """The model's metadata and readiness, by name and by name and version."""
    responses = error_responses(404, 503)

    def metadata(name: str, version: str | None) -> Response:
        server.check_target(name, version)
        return json_response(model_metadata(server).model_dump())

    @router.get("/models/{name}", response_model=ModelMetadata, responses=responses)
    async def model_metadata_route(name: str) -> Response:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=responses)
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @router.get("/models/{name}/ready", responses=responses)
    async def model_ready(name: str) -> Response:
        server.check_target(name)
        return _ready_response(server)

    @router.get("/models/{name}/versions/{version}/ready", responses=responses)
    async def version_ready(name: str, version: str) -> Response:
        server.check_target(name, version)
        return _ready_response(server)


def _add_infer_routes(router: APIRouter, server: ModelServer, predict_token: TokenFile | None) -> None:
    """Inference by name and by name and version, served by plain routes ahead of the APIRoutes (see PlainRoute)."""
    settings = server.settings
    version_headers = {VERSION_HEADER: settings.model_version}

    async def infer_route(request: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        server.check_target(name, version)
        require_bearer(request, predict_token)
        body = await read_body(request, settings.max_body_bytes)
        body = await decode_body(body, request.headers.get("content-encoding"), settings.max_body_bytes)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        model = server.require_model()
        if not header and len(binary):
            message, tensors = _raw_request(model, binary)
        elif len(header) >= settings.large_body_bytes and not len(binary):
            message, arrays = await parsing_process(request).run(decode_json_request, bytes(header))
            tensors = [
                InputTensor(given.name, given.datatype, given.shape, functools.partial(_decoded, array))
                for given, array in zip(message.inputs, arrays, strict=True)
            ]
        else:
            payload = parse_json_header(header)
            message = parse_request(payload)
            tensors = _tensors(message, binary, data_may_hold_bools(header, payload))
        names = output_names(model, [o.name for o in message.outputs] if message.outputs else None)
        inferred = await infer(server, model, tensors, entity_ids_of(message.parameters, model))
        head: dict[str, Any] = {"model_name": settings.name, "model_version": settings.model_version}
        if message.id is not None:
            head["id"] = message.id
        parameters: dict[str, Any] = {"latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        if inferred.request_id is not None:
            parameters["request_id"] = inferred.request_id
        head["parameters"] = parameters
        answer, header_length = _encode_answer(message, head, inferred.outputs, names, datatypes(model))
        return await _respond(request, answer, header_length, version_headers)

    answers = InferenceResponse
    errors = error_responses(400, 401, 404, 413, 422, 503, binary=True)
    body = request_body(InferenceRequest, binary=True)

    @router.post("/models/{name}/infer", response_model=answers, responses=errors, openapi_extra=body)
    async def model_infer(request: Request, name: str) -> Response:
        return await infer_route(request, name, None)

    @router.post(
        "/models/{name}/versions/{version}/infer", response_model=answers, responses=errors, openapi_extra=body
    )
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer_route(request, name, version)

    async def plain_model_infer(request: Request) -> Response:
        return await infer_route(request, request.path_params["name"], None)

    async def plain_version_infer(request: Request) -> Response:
        return await infer_route(request, request.path_params["name"], request.path_params["version"])

    router.routes[:0] = [
        PlainRoute("/v2/models/{name}/infer", plain_model_infer, methods=["POST"], include_in_schema=False),
        PlainRoute(
            "/v2/models/{name}/versions/{version}/infer", plain_version_infer, methods=["POST"], include_in_schema=False
        ),
    ]
