"""A KServe client program, run as a child process by test_clients_kserve.py.

kserve registers the protocol's `inference.*` protobuf names, and so does tritonclient.grpc;
protobuf refuses both in one process, so the KServe user runs in a process of its own, as
a real one would. Usage: python kserve_user.py V1_URL V2_URL GRPC_ADDRESS MODEL (V1: a model of 3
features; V2 and gRPC: protocol_models.build_mixed); prints one JSON
object with what each call returned (arrays as lists with their dtype).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import numpy as np
import orjson
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _array(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.tolist()}


def _request(model: str, binary: bool) -> InferRequest:
    x = InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.array([[1.5, 2.0, -3.0], [0.0, 4.0, 8.0]], dtype=np.float32), binary_data=binary)
    k = InferInput("k", [2, 1], "INT64")
    k.set_data_from_numpy(np.array([[2], [2**40]], dtype=np.int64), binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[x, k], request_id=f"kserve-{binary}")


async def _v1(url: str, model: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    try:
        answer = await client.infer(url, {"instances": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}, model_name=model)
        try:
            await client.infer(url, {"instances": [[1.0, "x", 3.0]]}, model_name=model)
            refused = ""
        except httpx.HTTPStatusError as exc:
            refused = str(exc)
        return {
            "live": await client.is_server_live(url),
            "ready": await client.is_model_ready(url, model),
            "predictions": answer["predictions"],
            "refused": refused,
        }
    finally:
        await client.close()


async def _v2(url: str, model: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        results = {}
        for binary in (True, False):
            response = await client.infer(url, _request(model, binary), model_name=model)
            results[f"binary={binary}"] = {
                "id": response.id,
                "outputs": {o.name: _array(o.as_numpy()) for o in response.outputs},
            }
        try:
            await client.infer(url, _request("other", False), model_name="other")
            missing = ""
        except httpx.HTTPStatusError as exc:
            missing = str(exc)
        return {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
            "results": results,
            "missing": missing,
        }
    finally:
        await client.close()


async def _grpc(address: str, model: str) -> dict[str, Any]:
    client = InferenceGRPCClient(address, timeout=60)
    try:
        response = await client.infer(_request(model, True))
        return {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "outputs": {o.name: _array(o.as_numpy()) for o in response.outputs},
        }
    finally:
        await client.close()


async def main(v1_url: str, v2_url: str, address: str, model: str) -> None:
    report = {"v1": await _v1(v1_url, model), "v2": await _v2(v2_url, model), "grpc": await _grpc(address, model)}
    sys.stdout.buffer.write(orjson.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
