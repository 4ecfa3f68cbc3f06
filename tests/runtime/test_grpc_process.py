"""gRPC in the real `modelfleet-runtime serve` process: on --grpc-port, and drained on SIGTERM like HTTP."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2 as pb
from modelfleet_runtime.grpc_predict_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.onnx_models import build_mlp
from tests.support.polling import wait_for
from tests.support.runtime_process import RuntimeProcess


def _port_for_grpc() -> int:
    # gRPC binds its own port (it cannot serve an inherited socket): take one the system has free.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _rows_request(rows: np.ndarray) -> Any:
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="x", datatype="FP32", shape=list(rows.shape)).contents.fp32_contents.extend(
        rows.ravel().tolist()
    )
    return request


async def test_sigterm_finishes_grpc_calls_in_flight_refuses_new_ones_and_exits_zero(tmp_path: Path) -> None:
    # Heavy rows in small messages: the calls arrive much faster than the model gets through them.
    model = build_mlp(tmp_path / "heavy.onnx", (8, 3072, 3072, 1))
    port = _port_for_grpc()
    env = {
        "MODELFLEET_MODEL": str(model),
        "MODELFLEET_HOST": "127.0.0.1",
        "MODELFLEET_GRPC_PORT": str(port),
        "MODELFLEET_WARMUP_ITERATIONS": "1",
        "MODELFLEET_MAX_BATCH_SIZE": "1",
        "MODELFLEET_MAX_QUEUE": "100000",
    }
    rows = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    async with RuntimeProcess(env, tmp_path) as runtime, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [asyncio.ensure_future(stub.ModelInfer(_rows_request(rows))) for _ in range(100)]

        async def every_call_queued() -> bool:
            # gRPC cancels, at shutdown, calls it has read but not yet handed to a handler: the signal
            # comes once every call still open is in the batcher (one of them may be running).
            open_calls = sum(not c.done() for c in calls)
            return (await runtime.client.get("/stats")).json()["queue_depth"] >= (open_calls - 1) * 64

        await wait_for(every_call_queued, timeout=60, interval=0.01, message="every gRPC call queued in the batcher")
        runtime.child.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            # A probe sent before the signal was handled is queued behind every call: it must not
            # wait for its answer (that would outlast the drain), only be seen not to be refused.
            try:
                await stub.ModelInfer(_rows_request(rows[:1]), timeout=1)
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

        await wait_for(refused, timeout=30, interval=0.01, message="a new call refused while draining")
        still_running = sum(not c.done() for c in calls)
        answers = await asyncio.gather(*calls)
        code = await asyncio.wait_for(runtime.wait(), 60)
    assert still_running > 0, "the refusal came after every call had finished: it did not happen while draining"
    assert all(len(a.outputs[0].contents.fp32_contents) == 64 for a in answers)
    assert code == 0
