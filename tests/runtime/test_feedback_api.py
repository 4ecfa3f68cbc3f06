"""POST /feedback and GET /v1/feedback/stats on the real app: validation, auth, durability under kill -9."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelfleet_runtime.app import create_app
from modelfleet_runtime.feedback import OPEN_SUFFIX, FeedbackVolume
from modelfleet_runtime.model_server import ModelServer
from modelfleet_runtime.settings import Settings
from tests.support.runtime_process import RuntimeProcess, listening_socket


def settings_for(model: Path, volume: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model": str(model),
        "name": "fraud",
        "model_version": "3",
        "warmup_iterations": 1,
        "feedback_dir": str(volume) if volume else "",
    }
    values.update(overrides)
    return Settings(**values)


class Entities:
    """An in-memory online store with the FeatureStore's lookup interface."""

    def __init__(self, rows: dict[str, list[float]]) -> None:
        self.rows = rows
        self.width = len(next(iter(rows.values())))

    async def get(self, entity_id: str) -> np.ndarray:
        return np.asarray(self.rows[entity_id], dtype=np.float32)

    async def close(self) -> None:
        """Nothing to release: the rows live in memory."""


@pytest.fixture
async def served(mlp_path: Path, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ModelServer, Path]]:
    volume = tmp_path / "volume"
    server = ModelServer(settings_for(mlp_path, volume))
    server.features = Entities({"u1": [10.0, 20.0]})
    app = create_app(server.settings, server)
    await server.start()
    await server.wait_loaded()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, server, volume
    await server.stop()


def stored(volume: Path) -> list[tuple[list[float], Any]]:
    return [(r.sample.features, r.sample.label) for r in FeedbackVolume(volume).iter_unconsumed()]


async def test_feedback_is_stored_durably_in_every_request_shape(served: Any) -> None:
    client, _, volume = served
    r = await client.post("/feedback", json={"features": [1, 2, 3, 4], "label": 0.5})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "unconsumed": 1}
    r = await client.post("/feedback", json={"instances": [[5, 6, 7, 8], [9, 10, 11, 12]], "labels": [1, [2, 3]]})
    assert r.json() == {"accepted": 2, "unconsumed": 3}
    r = await client.post("/feedback", json={"entity_id": "u1", "features": [0.25, 0.5], "label": 7})
    assert r.json() == {"accepted": 1, "unconsumed": 4}
    prediction = await client.post("/predict", json={"features": [0.1, 0.2, 0.3, 0.4]})
    request_id = prediction.json()["request_id"]
    r = await client.post("/feedback", json={"request_id": request_id, "label": 1.5})
    assert r.json() == {"accepted": 1, "unconsumed": 5}

    f32 = [float(v) for v in np.float32([0.1, 0.2, 0.3, 0.4])]
    assert stored(volume) == [
        ([1, 2, 3, 4], 0.5),
        ([5, 6, 7, 8], 1),
        ([9, 10, 11, 12], [2, 3]),
        ([10, 20, 0.25, 0.5], 7),
        (f32, 1.5),
    ]
    assert {r.sample.model_version for r in FeedbackVolume(volume).iter_unconsumed()} == {"3"}

    stats = (await client.get("/v1/feedback/stats")).json()
    assert stats["enabled"] is True and stats["scope"] == "volume"
    assert stats["unconsumed"] == 5 and stats["appended_by_pod"] == 5
    metrics = (await client.get("/metrics")).text
    assert "modelfleet_feedback_samples_total 5.0" in metrics
    assert "modelfleet_feedback_unconsumed_samples 5.0" in metrics
    assert "modelfleet_feedback_fsync_seconds_count" in metrics


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"features": [1, 2, 3], "label": 1}, 400, "expected 4 features, got 3"),
        ({"features": [1, 2, "x", 4], "label": 1}, 422, "not a number"),
        ({"features": [1, 2, 1e39, 4], "label": 1}, 422, "not a finite float32"),
        ({"features": [1, 2, 3, 4]}, 400, "missing 'label'"),
        ({"features": [1, 2, 3, 4], "label": "cat"}, 422, "label must be a number"),
        ({"features": [1, 2, 3, 4], "label": True}, 422, "label must be a number"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, 4]], "labels": [1]}, 400, "2 rows but 1 labels"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, 4]], "label": 1}, 400, "need 'labels'"),
        ({"entity_id": "u1", "features": [1], "label": 1}, 400, "entity features (2) + request features (1) = 3"),
        ({"request_id": "0123abcd", "label": 1}, 404, "unknown or expired request_id"),
        ({"label": 1}, 400, "expected 'features'"),
    ],
)
async def test_bad_feedback_is_refused_with_a_reason_and_nothing_is_stored(
    served: Any, body: dict, status: int, says: str
) -> None:
    client, _, volume = served
    r = await client.post("/feedback", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]
    assert stored(volume) == []


async def test_nan_is_refused(served: Any) -> None:
    client, _, volume = served
    r = await client.post(
        "/feedback", content=b'{"features": [1, NaN, 3, 4], "label": 1}', headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and "NaN" in r.json()["error"]
    assert stored(volume) == []


async def test_feedback_without_a_volume_answers_404_and_stats_say_disabled(mlp_path: Path) -> None:
    server = ModelServer(settings_for(mlp_path, None))
    transport = httpx.ASGITransport(app=create_app(server.settings, server))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/feedback", json={"features": [1, 2, 3, 4], "label": 1})
        # Permanent for this server: 404, not a retryable 503.
        assert r.status_code == 404 and "feedback is not enabled" in r.json()["error"]
        assert (await client.get("/v1/feedback/stats")).json()["enabled"] is False


async def test_with_a_token_file_feedback_without_the_bearer_token_is_refused_and_not_stored(
    mlp_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    volume = tmp_path / "volume"
    server = ModelServer(settings_for(mlp_path, volume, feedback_token_file=str(tmp_path / "token")))
    app = create_app(server.settings, server)
    await server.start()
    await server.wait_loaded()
    body = {"features": [1, 2, 3, 4], "label": 1}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}):
            r = await client.post("/feedback", json=body, headers=headers)
            assert r.status_code == 401, r.text
        assert not volume.exists() or not any(volume.iterdir())
        r = await client.post("/feedback", json=body, headers={"authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
    await server.stop()
    assert stored(volume) == [([1, 2, 3, 4], 1)]


def process_env(settings: Settings) -> dict[str, str]:
    return {
        "HOSTNAME": "fraud-3-x1",
        "MODELFLEET_MODEL": settings.model,
        "MODELFLEET_FEEDBACK_DIR": settings.feedback_dir,
        "MODELFLEET_MODEL_VERSION": "3",
        "MODELFLEET_WARMUP_ITERATIONS": "1",
    }


async def test_every_acknowledged_sample_survives_kill_9_exactly_once(mlp_path: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    settings = settings_for(mlp_path, volume)
    listener = listening_socket()
    clients, per_client, kill_after = 16, 25, 150
    acked: list[tuple[int, int]] = []
    failed: list[tuple[int, int]] = []
    first = RuntimeProcess(process_env(settings), tmp_path, listener=listener, name="first")
    second = RuntimeProcess(process_env(settings), tmp_path, listener=listener, name="second")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    try:
        await first.start()
        await first.wait_ready()
        async with httpx.AsyncClient(base_url=first.url, limits=limits, timeout=60) as client:
            killed = asyncio.Event()

            async def send(c: int) -> None:
                for s in range(per_client):
                    try:
                        r = await client.post("/feedback", json={"features": [c, s, 0.5, 0.25], "label": c * 1000 + s})
                    except httpx.HTTPError:
                        failed.append((c, s))
                        continue
                    if r.status_code != 200:
                        failed.append((c, s))
                        continue
                    acked.append((c, s))
                    if len(acked) == kill_after:
                        first.kill()  # SIGKILL while the other clients' requests are in flight
                        killed.set()

            senders = [asyncio.create_task(send(c)) for c in range(clients)]
            await killed.wait()
            await first.wait()
            # A torn record, as if the write of a group had been cut short.
            [open_segment] = [p for p in volume.iterdir() if p.name.endswith(OPEN_SUFFIX)]
            with open(open_segment, "ab") as f:
                f.write(b'{"features":[99,99,0.5,0.2')
            # Requests sent meanwhile wait in the listening socket's backlog for the restarted server.
            await second.start()
            await asyncio.gather(*senders)
            stats = (await client.get("/v1/feedback/stats")).json()
    finally:
        await first.stop()
        await second.stop()
        listener.close()

    assert len(acked) + len(failed) == clients * per_client
    assert len(acked) > kill_after
    counts = collections.Counter(
        (int(r.sample.features[0]), int(r.sample.features[1])) for r in FeedbackVolume(volume).iter_unconsumed()
    )
    assert all(counts[key] == 1 for key in acked), "an acknowledged sample is missing or duplicated"
    assert max(counts.values()) == 1
    assert set(counts) <= set(acked) | set(failed)
    assert stats["unconsumed"] >= len(acked)
    assert stats["corrupt_records"] == 0
    # The dead server's segment was sealed by its successor; the torn tail is never read.
    assert all(r.sample.features[0] != 99 for r in FeedbackVolume(volume).iter_unconsumed())
    assert FeedbackVolume(volume).stats().open_segments <= 1
