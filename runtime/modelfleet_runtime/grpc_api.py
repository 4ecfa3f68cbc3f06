"""Open Inference Protocol gRPC (`inference.GRPCInferenceService`) over the same ModelServer.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, as
KServe's grpc_predict_v2.proto defines them (grpc_predict_v2/, generated code). Inputs
come as typed `contents` or as `raw_input_contents` (the binary form of REST's extension);
the answer mirrors the request: raw outputs for raw inputs (what Triton's client reads),
typed contents otherwise, raw for every output when one has no typed field (FP16).
Errors are RuntimeProblems mapped to status codes in one place (`_CODES`).

`GrpcServer` runs a grpc.aio server on the app's event loop (the batcher answers there),
bounded like HTTP: a message over the body limit is RESOURCE_EXHAUSTED before it is
read, and on SIGTERM it stops taking calls and lets running ones finish.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import numpy as np

from . import __version__
from .errors import InvalidInput, RuntimeProblem, Unauthorized
from .grpc_predict_v2 import grpc_predict_v2_pb2 as pb
from .grpc_predict_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from .http_io import TokenFile
from .metrics import INFERENCE_PATHS
from .model_server import ModelServer
from .tensor_codec import CONTENTS_FIELD, decode_binary, decode_typed, encode_binary
from .v2_api import EXTENSIONS, model_metadata
from .v2_infer import InputTensor, datatypes, entity_ids_of, infer, output_names

log = logging.getLogger("modelfleet.grpc")

# The metrics' endpoint label of ModelInfer: the gRPC method's full name.
INFER_METHOD = INFERENCE_PATHS[-1]  # "/inference.GRPCInferenceService/ModelInfer"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))
# grpc.aio.ServicerContext; grpcio has no type hints.
Context = Any


def _bearer_matches(metadata: Any, token: str) -> bool:
    supplied = str(dict(metadata or ()).get("authorization", ""))
    scheme, _, value = supplied.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _parameters(parameters: Any) -> dict[str, Any]:
    """An InferParameter map as plain values."""
    values = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind else None
    return values


def _shape(name: str, dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return shape


def _typed_values(tensor: Any) -> Any:
    """The one contents field that carries `tensor`'s datatype, refusing values in any other field."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; send it in raw_input_contents"
        )
    stray = [f for f in _ALL_FIELDS if f != field and len(getattr(tensor.contents, f))]
    if stray:
        raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} values go in contents.{field}, not in {stray}")
    return getattr(tensor.contents, field)


def _tensors(request: Any) -> list[InputTensor]:
    names = [t.name for t in request.inputs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInput(f"inputs {twice} are given more than once")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one each")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        shape = _shape(tensor.name, tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r}: contents must be empty when raw_input_contents is used")
            args: tuple[Any, ...] = (decode_binary, tensor.name, tensor.datatype, shape, raw[index])
        else:
            args = (decode_typed, tensor.name, tensor.datatype, shape, _typed_values(tensor))
        tensors.append(InputTensor(tensor.name, tensor.datatype, shape, _bind(*args)))
    return tensors


def _bind(decoder: Any, *args: Any) -> Any:
    return lambda: decoder(*args)


def _requested(request: Any) -> list[str] | None:
    names = [o.name for o in request.outputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"outputs {sorted({n for n in names if names.count(n) > 1})} are requested more than once")
    return names or None


def _fill_outputs(
    response: Any, outputs: dict[str, np.ndarray], names: list[str], types: dict[str, str], raw: bool
) -> None:
    raw = raw or any(types[n] not in CONTENTS_FIELD for n in names)
    for name in names:
        array, datatype = outputs[name], types[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(encode_binary(array, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode("utf-8") for v in array.ravel())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ModelServer, predict_token: TokenFile | None) -> None:
        self.server = server
        self.predict_token = predict_token

    @staticmethod
    async def _abort(context: Context, problem: RuntimeProblem) -> NoReturn:
        await context.abort(_CODES.get(problem.status, grpc.StatusCode.INTERNAL), problem.message)
        raise AssertionError("grpc's abort raises")  # pragma: no cover

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        try:
            self.server.check_target(request.name, request.version or None)
        except RuntimeProblem as problem:
            await self._abort(context, problem)
        return pb.ModelReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(name="modelfleet", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        try:
            self.server.check_target(request.name, request.version or None)
            meta = model_metadata(self.server)
        except RuntimeProblem as problem:
            await self._abort(context, problem)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        started = time.perf_counter()
        status = 200
        try:
            return await self._infer(request, context)
        except RuntimeProblem as problem:
            status = problem.status
            await self._abort(context, problem)
        finally:
            self.server.metrics.observe_request(INFER_METHOD, status, time.perf_counter() - started, True)

    async def _infer(self, request: Any, context: Context) -> Any:
        server, settings = self.server, self.server.settings
        server.check_target(request.model_name, request.model_version or None)
        if self.predict_token is not None and not _bearer_matches(
            context.invocation_metadata(), self.predict_token.token
        ):
            raise Unauthorized("missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")
        model = server.require_model()
        tensors = _tensors(request)
        names = output_names(model, _requested(request))
        entity_ids = entity_ids_of(_parameters(request.parameters), model)
        inferred = await infer(server, model, tensors, entity_ids)
        response = pb.ModelInferResponse(model_name=settings.name, model_version=settings.model_version, id=request.id)
        if inferred.request_id is not None:
            response.parameters["request_id"].string_param = inferred.request_id
        _fill_outputs(response, inferred.outputs, names, datatypes(model), raw=bool(request.raw_input_contents))
        return response


class GrpcServer:
    """The gRPC endpoint of one process: `start()` binds and serves, `drain()` stops taking calls, `stop()` waits."""

    def __init__(
        self, server: ModelServer, predict_token: TokenFile | None, host: str, port: int, *, reuse_port: bool = False
    ) -> None:
        self.model_server = server
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = port
        grace = server.settings.drain_timeout_seconds
        self.grace = grace
        limit = server.settings.max_body_bytes
        # so_reuseport off: a second process on the port is a clear start-up error, not a silent share.
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self._server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server, predict_token), self._server)
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port (the one the system chose when `port` was 0)."""
        try:
            bound = self._server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {self.address}: {exc} (--grpc-port 0 turns gRPC off)") from exc
        if not bound:
            raise RuntimeError(f"gRPC cannot listen on {self.address} (--grpc-port 0 turns gRPC off)")
        await self._server.start()
        self.port = int(bound)
        loop = asyncio.get_running_loop()

        # begin_drain runs in uvicorn's signal handler: hand the stop to the loop.
        def on_drain() -> None:
            loop.call_soon_threadsafe(self.drain)

        self.model_server.on_drain(on_drain)
        log.info("gRPC (Open Inference Protocol) on %s, port %d", self.address, self.port)
        return self.port

    def drain(self) -> None:
        """Refuse new calls from now on; running calls get up to the drain timeout to finish."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop(self.grace))

    async def stop(self) -> None:
        self.drain()
        assert self._stopping is not None
        await self._stopping
