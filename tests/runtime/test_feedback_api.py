"""POST /feedback and GET /v1/feedback/stats on the real app: labels by request_id, validation, quota, retention."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelfleet_runtime.app import create_app
from modelfleet_runtime.feedback import FeedbackVolume, Layout
from modelfleet_runtime.model_server import ModelServer
from modelfleet_runtime.prediction_log import iter_predictions
from modelfleet_runtime.settings import Settings
from modelfleet_runtime.training import job
from modelfleet_runtime.training.join import join
from tests.support.onnx_models import build_logistic
from tests.support.polling import wait_for

DAY = 86400.0


class Clock:
    """Wall-clock seconds the test moves: the dates of predictions and labels, and retention."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def settings_for(model: Path, volume: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model": str(model),
        "name": "fraud",
        "model_version": "3",
        "warmup_iterations": 1,
        "feedback_dir": str(volume) if volume else "",
        "feedback_maintenance_seconds": 0.05,
        "grpc_port": 0,  # in-process apps of parallel tests must not all bind gRPC's default port
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

    async def get_many(self, entity_ids: list[str]) -> list[np.ndarray]:
        return [await self.get(e) for e in entity_ids]

    async def close(self) -> None:
        """Nothing to release: the rows live in memory."""


@asynccontextmanager
async def serve(settings: Settings, clock: Clock | None = None) -> AsyncIterator[tuple[httpx.AsyncClient, ModelServer]]:
    """The app with its lifespan (the feedback writer sealed at the end), over ASGI."""
    server = ModelServer(settings, clock=clock or Clock())
    server.features = Entities({"u1": [10.0, 20.0]})
    app = create_app(settings, server)
    async with app.router.lifespan_context(app):
        await server.wait_loaded()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client, server


async def logged(server: ModelServer, count: int) -> None:
    """Until the server's prediction log has written `count` predictions."""
    plog = server.prediction_log
    assert plog is not None
    await wait_for(lambda: plog.records >= count, timeout=60, message=f"{count} predictions logged")


def trained_on(volume: Path) -> list[tuple[list[float], Any]]:
    """What a training run would use now: (features, label), labels by request_id joined with the log."""
    fv = FeedbackVolume(volume)
    return [(r.sample.features, r.sample.label) for r in join(fv, fv.read_manifest()).records]


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    return tmp_path / "volume"


async def test_feedback_is_stored_durably_in_every_request_shape(mlp_path: Path, volume: Path) -> None:
    async with serve(settings_for(mlp_path, volume)) as (client, server):
        r = await client.post("/feedback", json={"features": [1, 2, 3, 4], "label": 0.5})
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 1, "unconsumed": 1}
        r = await client.post("/feedback", json={"instances": [[5, 6, 7, 8], [9, 10, 11, 12]], "labels": [1, 2]})
        assert r.json() == {"accepted": 2, "unconsumed": 3}
        r = await client.post("/feedback", json={"entity_id": "u1", "features": [0.25, 0.5], "label": 7})
        assert r.json() == {"accepted": 1, "unconsumed": 4}
        # A label for a prediction names it: the inputs it was made from (entity features joined) are logged.
        prediction = await client.post("/predict", json={"entity_id": "u1", "features": [0.1, 0.2]})
        await logged(server, 1)  # labels come later than that; one that comes first is pending until then
        r = await client.post("/feedback", json={"request_id": prediction.json()["request_id"], "label": 1.5})
        assert r.json() == {"accepted": 1, "unconsumed": 5}
        stats = (await client.get("/v1/feedback/stats")).json()
        metrics = (await client.get("/metrics")).text

    f32 = [float(v) for v in np.float32([10, 20, 0.1, 0.2])]
    assert trained_on(volume) == [
        ([1, 2, 3, 4], 0.5),
        ([5, 6, 7, 8], 1),
        ([9, 10, 11, 12], 2),
        ([10, 20, 0.25, 0.5], 7),
        (f32, 1.5),
    ]
    assert stats["enabled"] is True and stats["scope"] == "volume"
    assert (stats["unconsumed"], stats["with_features"], stats["matched"], stats["appended_by_pod"]) == (5, 4, 1, 5)
    assert "modelfleet_feedback_samples_total 5.0" in metrics
    assert "modelfleet_feedback_unconsumed_samples 5.0" in metrics
    assert "modelfleet_feedback_fsync_seconds_count" in metrics
    assert "modelfleet_prediction_log_records_total" in metrics


async def test_a_v2_prediction_answers_a_request_id_that_feedback_joins(mlp_path: Path, volume: Path) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
    async with serve(settings_for(mlp_path, volume)) as (client, server):
        answer = (await client.post("/v2/models/fraud/infer", json=body)).json()
        request_id = answer["parameters"]["request_id"]
        await logged(server, 1)
        r = await client.post("/feedback", json={"request_id": request_id, "labels": [0.5, 0.25]})
        assert r.status_code == 200 and r.json() == {"accepted": 2, "unconsumed": 2}
    assert trained_on(volume) == [([1, 2, 3, 4], 0.5), ([5, 6, 7, 8], 0.25)]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"features": [1, 2, 3], "label": 1}, 400, "expected 4 features, got 3"),
        ({"features": [1, 2, "x", 4], "label": 1}, 422, "not a number"),
        ({"features": [1, 2, 1e39, 4], "label": 1}, 422, "not a finite float32"),
        ({"features": [1, 2, 3, 4]}, 400, "missing 'label'"),
        ({"features": [1, 2, 3, 4], "label": "cat"}, 422, "label must be a number"),
        ({"features": [1, 2, 3, 4], "label": True}, 422, "label must be a number"),
        ({"features": [1, 2, 3, 4], "label": 1e308}, 422, "label 1e+308 is not a finite float32 number"),
        ({"features": [1, 2, 3, 4], "label": [1, 2]}, 400, "label has 2 values, but the model's output 'y'"),
        ({"features": [1, 2, 3, 4], "label": [0.5] * 4096}, 400, "has 1 value per row"),
        ({"features": [1, 2, 3, 4], "label": [0.5] * 4097}, 413, "the limit is 4096"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, 4]], "labels": [1]}, 400, "2 rows but 1 labels"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, 4]], "label": 1}, 400, "need 'labels'"),
        ({"entity_id": "u1", "features": [1], "label": 1}, 400, "entity features (2) + request features (1) = 3"),
        ({"request_id": "0123abcd", "label": 1}, 404, "unknown request_id '0123abcd'"),
        ({"request_id": "0123456789abcdef-1", "label": 1}, 404, "no prediction log on this feedback volume holds it"),
        ({"request_id": 7, "label": 1}, 400, "request_id must be a non-empty string"),
        ({"label": 1}, 400, "expected 'features'"),
    ],
)
async def test_bad_feedback_is_refused_with_a_reason_and_nothing_is_stored(
    mlp_path: Path, volume: Path, body: dict[str, Any], status: int, says: str
) -> None:
    async with serve(settings_for(mlp_path, volume)) as (client, _):
        r = await client.post("/feedback", json=body)
        assert r.status_code == status, r.text
        assert says in r.json()["error"]
    assert trained_on(volume) == []


@pytest.mark.parametrize(
    ("label", "status", "says"),
    [
        (-7, 422, "label -7 is outside [0, 1]: the model's output 'p' (float32) has 1 value per row after Sigmoid"),
        (1e308, 422, "not a finite float32 number"),
        ([0.5] * 4096, 400, "label has 4096 values"),
        (1, 200, ""),
        (0.25, 200, ""),
    ],
)
async def test_a_label_for_a_sigmoid_model_is_a_probability(
    tmp_path: Path, volume: Path, label: Any, status: int, says: str
) -> None:
    async with serve(settings_for(build_logistic(tmp_path / "p.onnx", np.linspace(-1, 1, 4)), volume)) as (client, _):
        rid = (await client.post("/predict", json={"features": [1, 2, 3, 4]})).json()["request_id"]
        r = await client.post("/feedback", json={"request_id": rid, "label": label})
        assert r.status_code == status, r.text
        assert says in r.text

        async def counted() -> int:
            return int((await client.get("/v1/feedback/stats")).json()["unconsumed"])

        # Matched once the prediction is written (a label may arrive first: it is pending until then).
        if status == 200:
            await wait_for(lambda: counted(), timeout=60)
        assert await counted() == (status == 200)


async def test_a_label_for_a_classifier_is_a_class_index_or_one_probability_per_class(
    classifier_path: Path, volume: Path
) -> None:
    async with serve(settings_for(classifier_path, volume)) as (client, _):
        for label, status, says in (
            (3, 422, "label 3 is not a class index: the model's output 'probabilities' (float32) has 3 values"),
            (1.5, 422, "not a class index"),
            ([0.2, 0.3], 400, "label has 2 values"),
            ([0.2, 0.3, 1.5], 422, "label[2] 1.5 is outside [0, 1]"),
            (2, 200, ""),
            ([0.2, 0.3, 0.5], 200, ""),
        ):
            r = await client.post("/feedback", json={"features": [0, 1, 2, 3, 4, 5], "label": label})
            assert r.status_code == status, (label, r.text)
            assert says in r.text
    assert [label for _, label in trained_on(volume)] == [2, [0.2, 0.3, 0.5]]


async def test_a_request_id_is_labelled_once(mlp_path: Path, volume: Path) -> None:
    async with serve(settings_for(mlp_path, volume)) as (client, server):
        rid = (await client.post("/predict", json={"features": [1, 2, 3, 4]})).json()["request_id"]
        await logged(server, 1)
        first = await client.post("/feedback", json={"request_id": rid, "label": 1})
        second = await client.post("/feedback", json={"request_id": rid, "label": 2})
        assert first.status_code == 200 and second.status_code == 409
        assert f"request_id {rid!r} already has a label" in second.json()["error"]
        stats = (await client.get("/v1/feedback/stats")).json()
    assert [label for _, label in trained_on(volume)] == [1]
    assert (stats["unconsumed"], stats["matched"]) == (1, 1)


async def test_a_label_ten_minutes_late_joins_and_one_past_the_retention_is_refused_as_expired(
    mlp_path: Path, volume: Path
) -> None:
    clock = Clock()
    settings = settings_for(mlp_path, volume, prediction_retention_seconds=DAY)
    async with serve(settings, clock) as (client, server):
        early = (await client.post("/predict", json={"features": [1, 2, 3, 4]})).json()["request_id"]
        late = (await client.post("/predict", json={"features": [5, 6, 7, 8]})).json()["request_id"]
        await logged(server, 2)
        clock.now += 600
        assert (await client.post("/feedback", json={"request_id": early, "label": 1})).status_code == 200
        clock.now += DAY
        r = await client.post("/feedback", json={"request_id": late, "label": 2})
        assert r.status_code == 404
        assert r.json()["error"].startswith(f"request_id {late!r} expired: predictions are kept for 86400s")
    assert trained_on(volume) == [([1, 2, 3, 4], 1)]


async def test_a_full_quota_answers_507_and_loses_nothing_already_acknowledged(mlp_path: Path, volume: Path) -> None:
    settings = settings_for(mlp_path, volume, feedback_quota_bytes=1024 * 1024, max_queue=2048)
    rows = [[float(i), 1.0, 2.0, 3.0] for i in range(2048)]
    accepted = 0
    async with serve(settings) as (client, _):
        for size in (2048, 256, 32, 1):  # large requests until one is refused, then smaller ones
            for _ in range(100):
                body = {"instances": rows[:size], "labels": [0.5] * size}
                r = await client.post("/feedback", json=body)
                if r.status_code != 200:
                    break
                accepted += r.json()["accepted"]
            assert r.status_code == 507, r.text
        assert "the feedback volume is full" in r.json()["error"]
        assert "--feedback-quota-bytes" in r.json()["error"]
        assert accepted >= 2048

        # Past its share of the quota the prediction log stops: predictions are answered without an id.
        async def answered_without_id() -> bool:
            answer = await client.post("/predict", json={"features": [1, 2, 3, 4]})
            assert answer.status_code == 200
            return "request_id" not in answer.json()

        await wait_for(answered_without_id, timeout=60)
        stats = (await client.get("/v1/feedback/stats")).json()
    assert stats["unconsumed"] == accepted
    assert len(trained_on(volume)) == accepted


async def test_consumed_labels_are_deleted_after_the_retention_period(mlp_path: Path, volume: Path) -> None:
    clock = Clock()
    settings = settings_for(mlp_path, volume, feedback_retention_seconds=600)
    async with serve(settings, clock) as (client, _):
        rows = [[float(i), 1.0, 2.0, 3.0] for i in range(20)]
        assert (await client.post("/feedback", json={"instances": rows, "labels": [0.5] * 20})).status_code == 200
    output = volume / "models" / "run-1"
    code = job.cli_main(
        ["--base-model", str(mlp_path), "--samples", str(volume), "--output", str(output), "--termination-log", ""]
    )
    assert code == 0
    consumed = Layout(volume).consumed
    assert len(list(consumed.iterdir())) == 1  # consumed, kept for the retention period
    async with serve(settings, clock) as (client, _):
        clock.now += 601
        await wait_for(lambda: not any(consumed.iterdir()), timeout=60)
        assert (await client.get("/v1/feedback/stats")).json()["unconsumed"] == 0
    assert json.loads((output / "metrics.json").read_text())["samples"]["used"] == 20


async def test_a_feedback_volume_the_server_cannot_write_keeps_it_unready_with_the_reason(
    mlp_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    async with serve(settings_for(mlp_path, tmp_path / "not-a-folder")) as (client, _):
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert "the feedback volume" in ready.json()["reason"] and "not-a-folder" in ready.json()["reason"]
        assert (await client.post("/predict", json={"features": [1, 2, 3, 4]})).status_code == 503


async def test_feedback_without_a_volume_answers_404_and_stats_say_disabled(mlp_path: Path) -> None:
    async with serve(settings_for(mlp_path, None)) as (client, _):
        r = await client.post("/feedback", json={"features": [1, 2, 3, 4], "label": 1})
        # Permanent for this server: 404, not a retryable 503.
        assert r.status_code == 404 and "feedback is not enabled" in r.json()["error"]
        assert (await client.get("/v1/feedback/stats")).json()["enabled"] is False
        assert "request_id" not in (await client.post("/predict", json={"features": [1, 2, 3, 4]})).json()


async def test_with_a_token_file_feedback_without_the_bearer_token_is_refused_and_not_stored(
    mlp_path: Path, tmp_path: Path, volume: Path
) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    body = {"features": [1, 2, 3, 4], "label": 1}
    async with serve(settings_for(mlp_path, volume, feedback_token_file=str(tmp_path / "token"))) as (client, _):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}):
            r = await client.post("/feedback", json=body, headers=headers)
            assert r.status_code == 401, r.text
        assert not Layout(volume).labels.exists()
        r = await client.post("/feedback", json=body, headers={"authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
    assert trained_on(volume) == [([1, 2, 3, 4], 1)]


async def test_payload_logging_without_feedback_logs_a_sample_of_the_predictions(
    mlp_path: Path, tmp_path: Path
) -> None:
    settings = settings_for(mlp_path, None, prediction_log_dir=str(tmp_path / "log"), prediction_log_sample_rate=0.5)
    async with serve(settings) as (client, _):
        answers = [(await client.post("/predict", json={"features": [i, 0, 0, 0]})).json() for i in range(200)]
        # Payload logging alone takes no feedback: that is permanent for this server, so 404.
        assert (await client.post("/feedback", json={"features": [1, 2, 3, 4], "label": 1})).status_code == 404
    logged = [a for a in answers if "request_id" in a]
    assert 40 < len(logged) < 160
    assert [p.request_id for p in iter_predictions(Layout(tmp_path / "log").predictions)] == [
        a["request_id"] for a in logged
    ]
