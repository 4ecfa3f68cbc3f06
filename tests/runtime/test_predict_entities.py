"""Predictions that name an entity: features from a real Redis-protocol server, then the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import redis

from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.onnx_models import build_mlp
from tests.support.redis_server import RedisServer


def _session_output(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": rows.astype(np.float32)})[0]


async def test_entity_features_are_placed_before_the_request_features(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    model = build_mlp(tmp_path / "m.onnx", (5, 8, 1))
    private_redis_server.command("HSET", "user:u42", "age", "37", "tenure_days", "400", "txn_7d", "3")
    private_redis_server.command("HSET", "user:u7", "age", "22", "tenure_days", "10", "txn_7d", "0.5")
    settings = Settings(
        model=str(model),
        name="fraud",
        warmup_iterations=1,
        feature_store=private_redis_server.url,
        feature_prefix="user:",
        feature_fields=("age", "tenure_days", "txn_7d"),
    )
    async with live_server(settings) as live:
        one = await live.client.post("/predict", json={"entity_id": "u42", "features": [0.5, -1.0]})
        wrong_width = await live.client.post("/predict", json={"entity_id": "u42", "features": [0.5]})
        unknown = await live.client.post("/predict", json={"entity_id": "nobody", "features": [0.5, -1.0]})
        v2 = await live.client.post(
            "/v2/models/fraud/infer",
            json={
                "parameters": {"entity_ids": ["u42", "u7"]},
                "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 3.0]}],
            },
        )
        private_redis_server.stop()
        cached = await live.client.post("/predict", json={"entity_id": "u42", "features": [0.5, -1.0]})
        outage = await live.client.post("/predict", json={"entity_id": "u9", "features": [0.5, -1.0]})
    expected = _session_output(model, np.array([[37, 400, 3, 0.5, -1.0], [22, 10, 0.5, 2.0, 3.0]]))
    assert one.status_code == 200
    np.testing.assert_allclose(one.json()["prediction"], expected[0, 0], rtol=1e-5)
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected[:, 0], rtol=1e-5)
    assert wrong_width.status_code == 400
    assert "entity features (3) + request features (1) = 4, but the model takes 5" in wrong_width.json()["error"]
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]
    assert cached.status_code == 200
    np.testing.assert_allclose(cached.json()["prediction"], expected[0, 0], rtol=1e-5)
    assert outage.status_code == 503 and outage.headers.get("retry-after")


async def test_a_feature_store_wider_than_the_model_never_becomes_ready(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    model = build_mlp(tmp_path / "m.onnx", (2, 4, 1))
    settings = Settings(
        model=str(model), warmup_iterations=1, feature_store=private_redis_server.url, feature_fields=("a", "b", "c")
    )
    async with live_server(settings) as live:
        ready = await live.client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert "supplies 3 features per entity, but the model takes 2" in ready.json()["reason"]


class CommandCounts:
    """The server's own count of the commands it ran (INFO commandstats), apart from the INFO that asks."""

    def __init__(self, server: RedisServer) -> None:
        # One connection, opened now: its own handshake is counted before any baseline.
        self.client = redis.Redis(port=server.port, socket_timeout=5)
        self.client.ping()

    def stats(self) -> dict[str, int]:
        reply = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in reply.items() if name != "cmdstat_info"}

    def total(self) -> int:
        return sum(self.stats().values())


async def test_requests_that_cannot_be_served_cost_the_feature_store_nothing(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    model = build_mlp(tmp_path / "m.onnx", (5, 8, 1))
    private_redis_server.command("HSET", "user:u42", "age", "37", "tenure_days", "400", "txn_7d", "3")
    settings = Settings(
        model=str(model),
        name="fraud",
        warmup_iterations=1,
        max_queue=64,
        feature_store=private_redis_server.url,
        feature_prefix="user:",
        feature_fields=("age", "tenure_days", "txn_7d"),
        feature_miss_ttl=300,
    )
    many = [f"u{i}" for i in range(65)]

    def v2(entity_ids: list[str], shape: list[int]) -> dict[str, Any]:
        data = [0.5] * (shape[0] * shape[1])
        return {
            "parameters": {"entity_ids": entity_ids},
            "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}],
        }

    counts = CommandCounts(private_redis_server)
    async with live_server(settings) as live:
        before = counts.total()
        too_many = await live.client.post("/v2/models/fraud/infer", json=v2(many, [65, 2]))
        wrong_shape = await live.client.post("/v2/models/fraud/infer", json=v2(many[:3], [3, 3]))
        too_many_rows = await live.client.post("/predict", json={"entity_id": "u42", "instances": [[0.5, 1.0]] * 65})
        wrong_width = await live.client.post("/predict", json={"entity_id": "u42", "features": [0.5]})
        assert counts.total() == before
        # An unknown entity is asked for once, then answered from the miss cache.
        ghost = {"entity_id": "ghost", "features": [0.5, 1.0]}
        unknown = [await live.client.post("/predict", json=ghost) for _ in range(20)]
        hmgets = counts.stats()["hmget"]
        known = await live.client.post("/predict", json={"entity_id": "u42", "features": [0.5, 1.0]})
    assert too_many.status_code == 413 and "65 rows in one request; the limit is 64" in too_many.json()["error"]
    assert wrong_shape.status_code == 400 and "shape must be [3, 2]" in wrong_shape.json()["error"]
    assert too_many_rows.status_code == 413
    assert wrong_width.status_code == 400 and "but the model takes 5" in wrong_width.json()["error"]
    assert {r.status_code for r in unknown} == {404}
    assert "unknown entity 'ghost'" in unknown[-1].json()["error"]
    assert hmgets == 1
    assert known.status_code == 200
