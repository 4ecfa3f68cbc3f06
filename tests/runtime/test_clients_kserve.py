"""KServe's own clients (kserve 0.21: REST V1 and V2, and gRPC) against the real servers over 127.0.0.1.

The KServe program runs in a child process (kserve_user.py): see there why.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from modelfleet_runtime.grpc_api import GrpcServer
from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.onnx_models import build_mlp
from tests.support.protocol_models import build_mixed

USER = Path(__file__).with_name("kserve_user.py")


async def _run_kserve_user(*args: str) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(USER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), 240)
    assert child.returncode == 0, err.decode()[-4000:]
    return orjson.loads(out)


async def test_kserve_clients_use_v1_v2_and_grpc_unchanged(tmp_path: Path) -> None:
    v1_model = build_mlp(tmp_path / "v1.onnx", (3, 8, 2))
    v2_model = build_mixed(tmp_path / "mixed.onnx")
    settings = {"name": "m", "model_version": "1", "warmup_iterations": 1}
    async with (
        live_server(Settings(model=str(v1_model), **settings)) as v1,  # type: ignore[arg-type]
        live_server(Settings(model=str(v2_model), **settings)) as v2,  # type: ignore[arg-type]
    ):
        grpc_server = GrpcServer(v2.server, None, "127.0.0.1", 0)
        port = await grpc_server.start()
        try:
            report = await _run_kserve_user(v1.url, v2.url, f"127.0.0.1:{port}", "m")
        finally:
            await grpc_server.stop()

    session = ort.InferenceSession(str(v1_model), providers=["CPUExecutionProvider"])
    rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    assert report["v1"]["live"] is True and report["v1"]["ready"] is True
    np.testing.assert_allclose(report["v1"]["predictions"], session.run(None, {"x": rows})[0], rtol=1e-6)
    assert "422" in report["v1"]["refused"] and "row 0 feature 1 is not a number: 'x'" in report["v1"]["refused"]

    x = np.array([[1.5, 2.0, -3.0], [0.0, 4.0, 8.0]], dtype=np.float32)
    k = np.array([[2], [2**40]], dtype=np.int64)
    v2_report = report["v2"]
    assert v2_report["live"] and v2_report["ready"] and v2_report["model_ready"]
    for binary, result in v2_report["results"].items():
        assert result["id"] == f"kserve-{binary.split('=')[1]}"
        assert result["outputs"]["scaled"]["dtype"] == "float32" and result["outputs"]["next"]["dtype"] == "int64"
        np.testing.assert_array_equal(result["outputs"]["scaled"]["values"], x * k.astype(np.float32))
        assert result["outputs"]["next"]["values"] == (k + 1).tolist()
    assert "404" in v2_report["missing"] and "model 'other' is not served here" in v2_report["missing"]

    grpc_report = report["grpc"]
    assert grpc_report["live"] and grpc_report["ready"] and grpc_report["model_ready"]
    assert grpc_report["outputs"]["next"]["values"] == (k + 1).tolist()
    np.testing.assert_array_equal(grpc_report["outputs"]["scaled"]["values"], x * k.astype(np.float32))
