"""Triton's own clients against the real server over 127.0.0.1, as a migrating user runs them.

tritonclient.http (sync and aio) with binary_data true and false for inputs and outputs,
and tritonclient.grpc, on every datatype, a model with two inputs of different dtypes,
and a model with a string input. The sync clients block, so they run on a thread while
the server answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from tritonclient.utils import InferenceServerException

from modelfleet_runtime.grpc_api import GrpcServer
from modelfleet_runtime.settings import Settings
from tests.support.live_server import Live, live_server
from tests.support.protocol_models import (
    LABELS,
    NUMERIC,
    build_every_datatype,
    build_labels,
    build_mixed,
    expected,
    extreme_rows,
)


@dataclasses.dataclass
class Served:
    live: Live
    http: str  # host:port, as tritonclient takes it
    grpc: str


@contextlib.asynccontextmanager
async def serving(path: Path, **overrides: Any) -> AsyncIterator[Served]:
    settings = Settings(model=str(path), name="m", model_version="3", warmup_iterations=1, **overrides)
    async with live_server(settings) as live:
        grpc_server = GrpcServer(live.server, None, "127.0.0.1", 0)
        port = await grpc_server.start()
        try:
            yield Served(live, live.url.removeprefix("http://"), f"127.0.0.1:{port}")
        finally:
            await grpc_server.stop()


def _http_inputs(module: Any, arrays: dict[str, np.ndarray], datatypes: dict[str, str], binary: bool) -> list[Any]:
    inputs = []
    for name, array in arrays.items():
        given = module.InferInput(name, list(array.shape), datatypes[name])
        given.set_data_from_numpy(array, binary_data=binary)
        inputs.append(given)
    return inputs


def _grpc_inputs(arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Any]:
    inputs = []
    for name, array in arrays.items():
        given = triton_grpc.InferInput(name, list(array.shape), datatypes[name])
        given.set_data_from_numpy(array)
        inputs.append(given)
    return inputs


def _every_datatype_request() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays = {f"in_{d}": extreme_rows(d) for d in NUMERIC}
    return arrays, {f"in_{d}": d for d in NUMERIC}


def _assert_every_datatype(result: Any) -> None:
    for datatype in NUMERIC:
        got = result.as_numpy(f"out_{datatype}")
        want = expected(datatype, extreme_rows(datatype))
        assert got.dtype == want.dtype, datatype
        np.testing.assert_array_equal(got, want, err_msg=datatype)


async def _http_sync_infer(served: Served, binary_in: bool, binary_out: bool | None) -> Any:
    arrays, datatypes = _every_datatype_request()

    def call() -> Any:
        client = triton_http.InferenceServerClient(served.http)
        try:
            outputs = None
            if binary_out is not None:
                outputs = [triton_http.InferRequestedOutput(f"out_{d}", binary_data=binary_out) for d in NUMERIC]
            return client.infer("m", _http_inputs(triton_http, arrays, datatypes, binary_in), outputs=outputs)
        finally:
            client.close()

    return await asyncio.to_thread(call)


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["binary-out", "json-out", "default-out"])
async def test_triton_http_client_round_trips_every_datatype_exactly(
    tmp_path: Path, binary_in: bool, binary_out: bool | None
) -> None:
    async with serving(build_every_datatype(tmp_path / "all.onnx")) as served:
        result = await _http_sync_infer(served, binary_in, binary_out)
    _assert_every_datatype(result)
    sent_binary = {o["name"]: "binary_data_size" in o.get("parameters", {}) for o in result.get_response()["outputs"]}
    # Unnamed outputs: tritonclient asks for all of them in binary (binary_data_output).
    assert set(sent_binary.values()) == {binary_out is not False}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_triton_http_aio_client_round_trips_every_datatype_exactly(tmp_path: Path, binary: bool) -> None:
    arrays, datatypes = _every_datatype_request()
    async with serving(build_every_datatype(tmp_path / "all.onnx")) as served:
        client = triton_http_aio.InferenceServerClient(served.http)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("m")
            outputs = [triton_http_aio.InferRequestedOutput(f"out_{d}", binary_data=binary) for d in NUMERIC]
            result = await client.infer("m", _http_inputs(triton_http_aio, arrays, datatypes, binary), outputs=outputs)
            metadata = await client.get_model_metadata("m")
            server = await client.get_server_metadata()
        finally:
            await client.close()
    _assert_every_datatype(result)
    assert metadata["versions"] == ["3"] and {t["datatype"] for t in metadata["inputs"]} == set(NUMERIC)
    assert "binary_tensor_data" in server["extensions"]


async def test_triton_grpc_client_round_trips_every_datatype_exactly(tmp_path: Path) -> None:
    arrays, datatypes = _every_datatype_request()
    async with serving(build_every_datatype(tmp_path / "all.onnx")) as served:

        def call() -> tuple[Any, Any, bool]:
            client = triton_grpc.InferenceServerClient(served.grpc)
            try:
                ready = client.is_server_live() and client.is_server_ready() and client.is_model_ready("m", "3")
                return client.infer("m", _grpc_inputs(arrays, datatypes)), client.get_model_metadata("m"), ready
            finally:
                client.close()

        result, metadata, ready = await asyncio.to_thread(call)
    assert ready
    _assert_every_datatype(result)
    assert metadata.name == "m" and list(metadata.versions) == ["3"] and metadata.platform == "onnxruntime_onnx"


async def test_triton_grpc_aio_client_serves_two_inputs_of_different_dtypes_and_two_outputs(tmp_path: Path) -> None:
    x = np.array([[1.5, -2.0, 4.0], [0.25, 8.0, -1.0]], dtype=np.float32)
    k = np.array([[3], [2**40]], dtype=np.int64)
    async with serving(build_mixed(tmp_path / "mixed.onnx")) as served:
        client = triton_grpc_aio.InferenceServerClient(served.grpc)
        try:
            inputs = [triton_grpc_aio.InferInput("x", [2, 3], "FP32"), triton_grpc_aio.InferInput("k", [2, 1], "INT64")]
            inputs[0].set_data_from_numpy(x)
            inputs[1].set_data_from_numpy(k)
            outputs = [triton_grpc_aio.InferRequestedOutput("next"), triton_grpc_aio.InferRequestedOutput("scaled")]
            result = await client.infer("m", inputs, outputs=outputs, request_id="req-7")
        finally:
            await client.close()
    np.testing.assert_array_equal(result.as_numpy("scaled"), x * k.astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("next"), k + 1)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["next", "scaled"] and response.id == "req-7"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_a_model_with_a_string_input_loads_warms_up_and_serves_triton_http(tmp_path: Path, binary: bool) -> None:
    text = np.array([["cat", "émeu"], ["unknown", "dog"]], dtype=object)
    async with serving(build_labels(tmp_path / "labels.onnx")) as served:
        client = triton_http_aio.InferenceServerClient(served.http)
        try:
            given = triton_http_aio.InferInput("text", [2, 2], "BYTES")
            given.set_data_from_numpy(text, binary_data=binary)
            outputs = [triton_http_aio.InferRequestedOutput(n, binary_data=binary) for n in ("ids", "echo")]
            result = await client.infer("m", [given], outputs=outputs)
        finally:
            await client.close()
    np.testing.assert_array_equal(result.as_numpy("ids"), [[0, 2], [-1, 1]])
    echo = result.as_numpy("echo")
    # Binary BYTES come back as bytes (tritonclient does not decode them), JSON ones as str.
    decoded = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in echo]
    assert decoded == text.tolist() and LABELS[2] == "émeu"


async def test_a_model_with_a_string_input_serves_triton_grpc(tmp_path: Path) -> None:
    text = np.array([["dog", "cat"]], dtype=object)
    async with serving(build_labels(tmp_path / "labels.onnx")) as served:
        client = triton_grpc_aio.InferenceServerClient(served.grpc)
        try:
            given = triton_grpc_aio.InferInput("text", [1, 2], "BYTES")
            given.set_data_from_numpy(text)
            result = await client.infer("m", [given])
        finally:
            await client.close()
    np.testing.assert_array_equal(result.as_numpy("ids"), [[1, 0]])
    assert result.as_numpy("echo").tolist() == [[b"dog", b"cat"]]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
async def test_compressed_requests_and_answers_work_with_triton_http(tmp_path: Path, algorithm: str) -> None:
    rows = np.random.default_rng(3).standard_normal((64, 3)).astype(np.float32)
    k = np.arange(64, dtype=np.int64).reshape(64, 1)
    async with serving(build_mixed(tmp_path / "mixed.onnx")) as served:
        client = triton_http_aio.InferenceServerClient(served.http)
        try:
            inputs = [
                triton_http_aio.InferInput("x", [64, 3], "FP32"),
                triton_http_aio.InferInput("k", [64, 1], "INT64"),
            ]
            inputs[0].set_data_from_numpy(rows, binary_data=False)
            inputs[1].set_data_from_numpy(k, binary_data=True)
            result = await client.infer(
                "m", inputs, request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
            )
        finally:
            await client.close()
    np.testing.assert_array_equal(result.as_numpy("scaled"), rows * k.astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("next"), k + 1)


async def test_triton_clients_read_the_servers_error_messages(tmp_path: Path) -> None:
    async with serving(build_mixed(tmp_path / "mixed.onnx")) as served:
        client = triton_http_aio.InferenceServerClient(served.http)
        try:
            given = triton_http_aio.InferInput("x", [1, 3], "FP32")
            given.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
            with pytest.raises(InferenceServerException) as missing:
                await client.infer("m", [given])
            with pytest.raises(InferenceServerException) as config:
                await client.get_model_config("m")
            with pytest.raises(InferenceServerException) as unknown:
                await client.get_model_metadata("other")
        finally:
            await client.close()
        grpc_client = triton_grpc_aio.InferenceServerClient(served.grpc)
        try:
            grpc_given = triton_grpc_aio.InferInput("x", [1, 3], "FP32")
            grpc_given.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
            with pytest.raises(InferenceServerException) as grpc_missing:
                await grpc_client.infer("m", [grpc_given])
        finally:
            await grpc_client.close()
    assert missing.value.status() == "400" and "missing inputs ['k']" in missing.value.message()
    assert config.value.status() == "404" and "model configuration" in config.value.message()
    assert unknown.value.status() == "404" and "model 'other' is not served here" in unknown.value.message()
    assert grpc_missing.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing inputs ['k']" in grpc_missing.value.message()
