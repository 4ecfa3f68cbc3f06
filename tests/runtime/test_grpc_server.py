"""The gRPC service as the protocol defines it: typed and raw contents, status codes, limits, tokens.

Requests are built from the protocol's messages (the same .proto every client compiles)
and sent over a real grpc.aio channel to the server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import filecmp
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelfleet_runtime.grpc_api import GrpcServer
from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2 as pb
from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from modelfleet_runtime.http_io import TokenFile
from modelfleet_runtime.settings import Settings
from tests.support.live_server import Live, live_server
from tests.support.paths import REPO
from tests.support.protocol_models import build_every_datatype, build_labels, build_mixed


@contextlib.asynccontextmanager
async def grpc_stub(path: Path, token: str | None = None, **overrides: Any) -> AsyncIterator[tuple[Any, Live]]:
    settings = Settings(model=str(path), name="m", model_version="4", warmup_iterations=1, **overrides)
    async with live_server(settings) as live:
        token_file = None
        if token is not None:
            (path.parent / "predict-token").write_text(token)
            token_file = TokenFile(str(path.parent / "predict-token"))
        server = GrpcServer(live.server, token_file, "127.0.0.1", 0)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield pb_grpc.GRPCInferenceServiceStub(channel), live
        finally:
            await server.stop()


def _mixed(x: list[float], k: list[int], rows: int = 1) -> Any:
    request = pb.ModelInferRequest(model_name="m", id="t1")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 3]).contents.fp32_contents.extend(x)
    request.inputs.add(name="k", datatype="INT64", shape=[rows, 1]).contents.int64_contents.extend(k)
    return request


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details() or ""


async def test_typed_contents_are_answered_in_typed_contents(tmp_path: Path) -> None:
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx")) as (stub, _):
        answer = await stub.ModelInfer(_mixed([1.0, 2.0, 3.0, -1.0, 0.5, 4.0], [3, 2**40], rows=2))
    assert not answer.raw_output_contents and answer.id == "t1" and answer.model_version == "4"
    scaled, following = answer.outputs
    assert scaled.name == "scaled" and list(scaled.shape) == [2, 3]
    assert list(scaled.contents.fp32_contents) == [3.0, 6.0, 9.0, -(2.0**40), 2.0**39, 2.0**42]
    assert following.datatype == "INT64" and list(following.contents.int64_contents) == [4, 2**40 + 1]


async def test_strings_in_typed_contents_come_back_as_bytes_contents(tmp_path: Path) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="text", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend(
        ["émeu".encode(), b"owl"]
    )
    async with grpc_stub(build_labels(tmp_path / "labels.onnx")) as (stub, _):
        answer = await stub.ModelInfer(request)
    ids, echo = answer.outputs
    assert list(ids.contents.int64_contents) == [2, -1] and list(echo.contents.bytes_contents) == [
        "émeu".encode(),
        b"owl",
    ]


async def test_fp16_travels_raw_only_and_is_answered_raw(tmp_path: Path) -> None:
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3])
    raw.raw_input_contents.append(np.array([[1.5, -2.0, 1024.0]], dtype="<f2").tobytes())
    async with grpc_stub(build_every_datatype(tmp_path / "fp16.onnx", ("FP16",))) as (stub, _):
        code, details = await _code(stub.ModelInfer(typed))
        answer = await stub.ModelInfer(raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "FP16 has no typed contents field" in details
    assert not answer.outputs[0].HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], dtype="<f2"), [2.5, -1.0, 1025.0])


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (lambda r: setattr(r, "model_name", "other"), grpc.StatusCode.NOT_FOUND, "model 'other' is not served here"),
        (lambda r: setattr(r, "model_version", "9"), grpc.StatusCode.NOT_FOUND, "version '9'"),
        (
            lambda r: r.inputs[1].contents.int_contents.append(1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not in ['int_contents']",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.append(1.0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 3 values, contents have 4",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.__setitem__(1, float("nan")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a finite FP32",
        ),
        (
            lambda r: r.inputs.add().CopyFrom(r.inputs[0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs ['x'] are given more than once",
        ),
        (
            lambda r: r.raw_input_contents.append(b"\x00" * 12),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (lambda r: r.outputs.add(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "outputs ['nope'] unknown"),
    ],
    ids=["model", "version", "wrong-field", "count", "nan", "duplicate", "raw-count", "output"],
)
async def test_errors_map_to_grpc_status_codes_with_the_message(
    tmp_path: Path, change: Any, code: grpc.StatusCode, message: str
) -> None:
    request = _mixed([1.0, 2.0, 3.0], [1])
    change(request)
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx")) as (stub, _):
        got, details = await _code(stub.ModelInfer(request))
    assert got == code and message in details, details


@pytest.mark.parametrize(
    ("datatype", "field", "values", "message"),
    [
        ("INT8", "int_contents", [1, 300, 2], "flat index 1 is out of range for INT8 [-128, 127]: 300"),
        ("INT16", "int_contents", [1, 2, -40000], "flat index 2 is out of range for INT16"),
        ("UINT8", "uint_contents", [256, 0, 0], "flat index 0 is out of range for UINT8 [0, 255]: 256"),
        ("UINT16", "uint_contents", [0, 70000, 0], "flat index 1 is out of range for UINT16"),
    ],
)
async def test_narrow_integers_in_wide_fields_are_range_checked(
    tmp_path: Path, datatype: str, field: str, values: list[int], message: str
) -> None:
    request = pb.ModelInferRequest(model_name="m")
    getattr(request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, 3]).contents, field).extend(values)
    async with grpc_stub(build_every_datatype(tmp_path / "narrow.onnx", (datatype,))) as (stub, _):
        code, details = await _code(stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


async def test_a_message_over_the_body_limit_is_resource_exhausted(tmp_path: Path) -> None:
    rows = 2000
    request = _mixed([0.5] * (3 * rows), [1] * rows, rows=rows)
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx"), max_body_bytes=16 * 1024) as (stub, _):
        code, _details = await _code(stub.ModelInfer(request))
        small = await stub.ModelInfer(_mixed([1.0, 2.0, 3.0], [1]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(small.outputs[1].contents.int64_contents) == [2]


async def test_too_many_rows_is_resource_exhausted(tmp_path: Path) -> None:
    rows = 50
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx"), max_queue=10) as (stub, _):
        code, details = await _code(stub.ModelInfer(_mixed([0.5] * (3 * rows), [1] * rows, rows=rows)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "50 rows in one request; the limit is 10" in details


async def test_the_predict_token_guards_grpc_inference_too(tmp_path: Path) -> None:
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx"), token="s3cret") as (stub, _):
        code, details = await _code(stub.ModelInfer(_mixed([1.0, 2.0, 3.0], [1])))
        wrong, _ = await _code(
            stub.ModelInfer(_mixed([1.0, 2.0, 3.0], [1]), metadata=[("authorization", "Bearer nope")])
        )
        right = await stub.ModelInfer(_mixed([1.0, 2.0, 3.0], [1]), metadata=[("authorization", "Bearer s3cret")])
        live = await stub.ServerLive(pb.ServerLiveRequest())
    assert code == wrong == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
    assert list(right.outputs[1].contents.int64_contents) == [2] and live.live


async def test_health_and_metadata_follow_the_models_state(tmp_path: Path) -> None:
    async with grpc_stub(build_mixed(tmp_path / "mixed.onnx")) as (stub, live):
        ready = await stub.ServerReady(pb.ServerReadyRequest())
        model_ready = await stub.ModelReady(pb.ModelReadyRequest(name="m", version="4"))
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
        server = await stub.ServerMetadata(pb.ServerMetadataRequest())
        unknown, _ = await _code(stub.ModelReady(pb.ModelReadyRequest(name="m", version="5")))
        live.server.begin_drain()
        # Draining: the health check says not ready, or the server already refuses new calls.
        refused = None
        try:
            draining_ready = (await stub.ServerReady(pb.ServerReadyRequest())).ready
        except grpc.aio.AioRpcError as exc:
            refused, draining_ready = exc.code(), False
    assert ready.ready and model_ready.ready and not draining_ready
    assert refused in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("x", "FP32", [-1, 3]),
        ("k", "INT64", [-1, 1]),
    ]
    assert server.name == "modelfleet" and "binary_tensor_data" in server.extensions
    assert unknown == grpc.StatusCode.NOT_FOUND


async def test_a_model_that_failed_to_load_is_unavailable_over_grpc(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    async with grpc_stub(broken) as (stub, _):
        code, details = await _code(stub.ModelInfer(_mixed([1.0, 2.0, 3.0], [1])))
        ready = await stub.ServerReady(pb.ServerReadyRequest())
    assert code == grpc.StatusCode.UNAVAILABLE and "failed to load" in details and not ready.ready


def test_the_committed_grpc_code_is_what_the_pinned_generator_writes(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts" / "gen-grpc.sh"), str(tmp_path)], check=True, timeout=120)
    package = "modelfleet_runtime/grpc_predict_v2"
    names = ["grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py"]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / package, REPO / "runtime" / package, names, shallow=False)
    assert (mismatch, errors) == ([], []), "run scripts/gen-grpc.sh and commit its output"
    assert match == names
