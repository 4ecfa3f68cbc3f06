"""The runtime as a process: CLI, settings from flags and env, downloads, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_runtime.errors import ModelLoadError
from modelfleet_runtime.settings import Settings, SettingsError, parse_serve_args
from modelfleet_runtime.sources import resolve_local
from tests.support.live_server import live_server
from tests.support.onnx_models import build_mlp
from tests.support.polling import wait_for
from tests.support.runtime_process import RuntimeProcess, listening_socket

RUNTIME = [sys.executable, "-m", "modelfleet_runtime.cli"]


def test_a_flag_wins_over_its_environment_variable() -> None:
    env = {
        "MODELFLEET_MODEL": "file:///m.onnx",
        "MODELFLEET_MAX_BATCH_SIZE": "1",
        "MODELFLEET_MAX_QUEUE": "100000",
        "MODELFLEET_PORT": "9000",
        "MODELFLEET_FEATURE_FIELDS": "age, tenure_days,txn_7d",
    }
    settings = parse_serve_args(["--max-batch-size", "64"], env)
    assert settings.model == "file:///m.onnx" and settings.max_batch_size == 64 and settings.port == 9000
    assert settings.feature_fields == ("age", "tenure_days", "txn_7d")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m.onnx", "--max-batch-size", "0"], "max-batch-size must be at least 1"),
        (["--model", "m.onnx", "--port", "many"], "port: cannot read 'many' as int"),
        (["--model", "m.onnx", "--sha256", "abc"], "sha256 must be 64 hexadecimal characters"),
        (["--model", "m.onnx", "--listen-fd", "-2"], "listen-fd must be a file descriptor"),
        ([], "no model: pass --model URI"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        parse_serve_args(argv, {})


def test_mounted_sources_resolve_under_the_model_root() -> None:
    assert resolve_local("pvc://models/fraud/2/model.onnx", "/mnt/models") == Path(
        "/mnt/models/pvc/models/fraud/2/model.onnx"
    )
    assert resolve_local("configmap://fraud-model/model.onnx", "/mnt/models") == Path(
        "/mnt/models/configmap/fraud-model/model.onnx"
    )
    assert resolve_local("file:///opt/m.onnx", "/x") == Path("/opt/m.onnx")
    assert resolve_local("/opt/m.onnx", "/x") == Path("/opt/m.onnx")
    assert resolve_local("https://example.invalid/m.onnx", "/x") is None
    with pytest.raises(ModelLoadError, match=r"'\.\.' is not allowed"):
        resolve_local("pvc://claim/../etc/passwd", "/mnt/models")
    with pytest.raises(ModelLoadError, match="unsupported scheme 's3'"):
        resolve_local("s3://bucket/m.onnx", "/mnt/models")


async def test_pvc_source_is_served_from_its_mount(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "pvc" / "claim" / "fraud"
    folder.mkdir(parents=True)
    build_mlp(folder / "m.onnx")
    settings = Settings(model="pvc://claim/fraud/m.onnx", model_root=str(tmp_path / "root"), warmup_iterations=1)
    async with live_server(settings) as live:
        assert (await live.client.get("/v2/health/ready")).status_code == 200


def test_demo_model_command_writes_a_deterministic_model(tmp_path: Path) -> None:
    for name in ("a.onnx", "b.onnx"):
        subprocess.run([*RUNTIME, "demo-model", "--out", str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


async def _send_raw(port: int, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Write a whole POST /predict on its own connection, so the server surely has it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    return reader, writer


async def _read_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    payload = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return int(lines[0].split()[1]), orjson.loads(payload)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_answers_every_request_in_flight_then_exits_zero(tmp_path: Path, workers: int) -> None:
    # Heavy rows with small bodies: the requests arrive much faster than the model gets through them.
    model = build_mlp(tmp_path / "heavy.onnx", (8, 3072, 3072, 1))
    env = {
        "MODELFLEET_MODEL": str(model),
        "MODELFLEET_WORKERS": str(workers),
        "MODELFLEET_WARMUP_ITERATIONS": "1",
        "MODELFLEET_MAX_BATCH_SIZE": "1",
        "MODELFLEET_MAX_QUEUE": "100000",
        # Generous: the drain runs 1,280 heavy rows on a machine other tests share.
        "MODELFLEET_DRAIN_TIMEOUT_SECONDS": "120",
    }
    # With two workers each accepts on a SO_REUSEPORT sibling of this socket, so the 40
    # connections below land on both and the pod's in-flight gauge sums them.
    with listening_socket(reuse_port=True) as listener:
        async with RuntimeProcess(env, tmp_path, listener=listener) as runtime:

            async def predictions() -> tuple[float, float]:
                """(in flight, answered) /predict requests, from the pod's own metrics."""
                families = text_string_to_metric_families((await runtime.client.get("/metrics")).text)
                samples = [s for family in families for s in family.samples]
                # The /metrics request itself is in flight too.
                in_flight = next(s.value for s in samples if s.name == "modelfleet_requests_in_flight") - 1
                answered = sum(
                    s.value
                    for s in samples
                    if s.name == "modelfleet_requests_total" and s.labels.get("endpoint") == "/predict"
                )
                return in_flight, answered

            async def all_received() -> tuple[float, float] | None:
                counts = await predictions()
                return counts if sum(counts) >= 40 else None

            rng = np.random.default_rng(0)
            body = orjson.dumps({"instances": rng.standard_normal((32, 8)).astype(np.float32).tolist()})
            port = listener.getsockname()[1]
            connections = [await _send_raw(port, body) for _ in range(40)]
            # Every request has reached the server (a loaded machine may answer the first few already).
            in_flight, _ = await wait_for(all_received, timeout=60, interval=0.005)
            runtime.child.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*(_read_response(r, w) for r, w in connections))
            assert in_flight > 0, "every request was answered before SIGTERM: nothing was drained"
            assert [status for status, _ in answers] == [200] * 40
            assert all(len(payload["predictions"]) == 32 for _, payload in answers)
            assert await asyncio.wait_for(runtime.wait(), 180) == 0
