"""The runtime end to end: the real app under uvicorn, real onnxruntime, real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.onnx_models import build_two_output
from tests.support.polling import wait_for


def settings_for(path: Path, **overrides: object) -> Settings:
    values = {"model": str(path), "name": "fraud", "model_version": "2", "warmup_iterations": 2}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def reference(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: rows.astype(np.float32)})[0]


async def test_every_caller_gets_its_own_rows_under_concurrent_mixed_load(classifier_path: Path) -> None:
    rng = np.random.default_rng(1)
    requests = []
    for i in range(240):
        rows = rng.standard_normal((int(rng.integers(1, 6)), 6)).astype(np.float32)
        kind = ("features", "instances", "v2")[i % 3]
        if kind == "features":
            rows = rows[:1]
        requests.append((kind, rows))
    async with live_server(settings_for(classifier_path, max_batch_size=16)) as live:

        async def call(kind: str, rows: np.ndarray) -> np.ndarray:
            if kind == "features":
                r = await live.client.post("/predict", json={"features": rows[0].tolist()})
                assert r.status_code == 200, r.text
                return np.array([r.json()["prediction"]])
            if kind == "instances":
                r = await live.client.post("/predict", json={"instances": rows.tolist()})
                assert r.status_code == 200, r.text
                return np.array(r.json()["predictions"])
            body = {
                "id": "r",
                "inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}],
            }
            r = await live.client.post("/v2/models/fraud/infer", json=body)
            assert r.status_code == 200, r.text
            out = r.json()["outputs"][0]
            assert out["name"] == "probabilities" and out["datatype"] == "FP32"
            return np.array(out["data"]).reshape(out["shape"])

        answers = await asyncio.gather(*(call(kind, rows) for kind, rows in requests))
        history = list(live.server.batcher.history)

    for (_, rows), answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer, reference(classifier_path, rows), rtol=1e-5, atol=1e-6)
    assert max(record.rows for record in history) <= 16
    assert max(record.requests for record in history) > 1, "concurrent requests were never merged"
    assert sum(record.rows for record in history) >= sum(len(rows) for _, rows in requests)


# A bound far beyond any test's deadline: a batcher that held rows back to wait for company
# would leave these requests unanswered until the test fails, and no timing is asserted.
NEVER_MS = 600_000


async def test_batches_never_exceed_max_and_never_hold_waiting_rows_back(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path, max_batch_size=8, max_latency_ms=NEVER_MS, max_queue=4096)) as live:
        rng = np.random.default_rng(2)
        sizes = [int(rng.integers(1, 20)) for _ in range(120)]
        bodies = [{"instances": rng.standard_normal((n, 4)).tolist()} for n in sizes]
        responses = await asyncio.gather(*(live.client.post("/predict", json=b) for b in bodies))
        history = list(live.server.batcher.history)
    assert all(r.status_code == 200 for r in responses)
    for body, r in zip(bodies, responses, strict=True):
        assert len(r.json()["predictions"]) == len(body["instances"])
    assert sum(record.rows for record in history) == sum(sizes)  # no row lost, none run twice
    assert max(record.rows for record in history) == 8  # requests of up to 19 rows were split
    # Each batch is full, or took every row that was waiting: rows never wait for company.
    assert all(record.rows == 8 or record.rows_left == 0 for record in history)
    # One model run at a time, in the order recorded.
    assert all(after.dispatched >= before.finished for before, after in itertools.pairwise(history))


async def test_a_lone_request_is_dispatched_without_waiting_for_company(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path, max_latency_ms=NEVER_MS)) as live:
        r = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
        [record] = live.server.batcher.history
    assert r.status_code == 200
    assert (record.rows, record.requests, record.rows_left) == (1, 1, 0)


async def test_response_shapes_follow_the_design_contract(tmp_path: Path, classifier_path: Path) -> None:
    two = build_two_output(tmp_path / "two.onnx")
    async with live_server(settings_for(two)) as live:
        r = await live.client.post("/predict", json={"features": [1, 2, 3]})
        assert r.json()["prediction"] == {"doubled": [2.0, 4.0, 6.0], "total": 6.0}
        assert r.headers["x-model-version"] == "2" and r.json()["model_version"] == "2"
        assert isinstance(r.json()["latency_ms"], float)
    async with live_server(settings_for(classifier_path)) as live:
        r = await live.client.post("/predict", json={"instances": [[0] * 6, [1] * 6]})
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and all(len(p) == 3 for p in predictions)
        assert sum(predictions[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"features": [1, 2, 3]}', 400, "expected 4 features, got 3"),
        (b'{"features": [1, 2, "x", 4]}', 422, "row 0 feature 2 is not a number: 'x'"),
        (b'{"features": [1, 2, true, 4]}', 422, "row 0 feature 2 is not a number: True"),
        (b'{"features": [1, 2, NaN, 4]}', 400, "NaN and Infinity are not valid JSON numbers"),
        (b'{"features": [1, 2, 1e39, 4]}', 422, "row 0 feature 2 is not a finite float32 number"),
        (b'{"features": [1, 2, 3, 4]', 400, "malformed JSON"),
        (b"[1, 2, 3, 4]", 400, "must be a JSON object"),
        (b'{"rows": [[1, 2, 3, 4]]}', 400, "expected 'features' (one row) or 'instances'"),
        (b'{"instances": [[1, 2, 3, 4], [1, 2, 3]]}', 400, "row 1: expected 4 features, got 3"),
        (b'{"instances": []}', 400, "no rows"),
        (b'{"features": 5}', 400, "'features' must be a list of numbers"),
        (b"", 400, "empty request body"),
    ],
)
async def test_bad_input_gets_a_clear_error(mlp_path: Path, body: bytes, status: int, message: str) -> None:
    async with live_server(settings_for(mlp_path)) as live:
        r = await live.client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


async def test_bad_requests_never_disturb_good_ones_in_the_same_batch(mlp_path: Path) -> None:
    rng = np.random.default_rng(3)
    good = [rng.standard_normal(4).astype(np.float32) for _ in range(60)]
    async with live_server(settings_for(mlp_path)) as live:
        calls = []
        for i, row in enumerate(good):
            calls.append(live.client.post("/predict", json={"features": row.tolist()}))
            calls.append(live.client.post("/predict", json={"features": [1, 2, "bad", 4][: 3 + i % 2]}))
        responses = await asyncio.gather(*calls)
    expected = reference(mlp_path, np.stack(good))[:, 0]
    goods, bads = responses[0::2], responses[1::2]
    assert all(r.status_code in (400, 422) for r in bads)
    np.testing.assert_allclose([r.json()["prediction"] for r in goods], expected, rtol=1e-5)


async def test_body_over_the_limit_is_refused_with_413(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path, max_body_bytes=2048)) as live:
        r = await live.client.post("/predict", json={"instances": [[1.5, 2.5, 3.5, 4.5]] * 200})

        async def chunks():  # no Content-Length: the limit must hold while streaming
            for chunk in (b'{"instances": [', b"[1,2,3,4]," * 400, b"]}"):
                yield chunk

        chunked = await live.client.post("/predict", content=chunks())
    assert r.status_code == 413 and "limit is 2048" in r.json()["error"]
    assert chunked.status_code == 413


async def test_too_many_rows_in_one_request_is_refused(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path, max_queue=10)) as live:
        r = await live.client.post("/predict", json={"instances": [[1, 2, 3, 4]] * 11})
    assert r.status_code == 413 and "limit is 10" in r.json()["error"]


async def test_full_queue_answers_503_with_retry_after(mlp_path: Path) -> None:
    import threading

    async with live_server(settings_for(mlp_path, max_queue=4, max_batch_size=2)) as live:
        gate = threading.Event()
        batcher = live.server.batcher
        run = batcher._run_batch
        batcher._run_batch = lambda feeds: (gate.wait(30), run(feeds))[1]  # hold the model busy
        try:
            first = asyncio.ensure_future(live.client.post("/predict", json={"instances": [[1, 2, 3, 4]] * 2}))
            await wait_for(lambda: batcher.busy)
            waiting = asyncio.ensure_future(live.client.post("/predict", json={"instances": [[1, 2, 3, 4]] * 4}))
            await wait_for(lambda: batcher.queued_rows == 4)
            refused = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
        finally:
            gate.set()
        assert (await first).status_code == 200 and (await waiting).status_code == 200
        metrics = _samples((await live.client.get("/metrics")).text)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue full" in refused.json()["error"]
    # Backpressure, counted apart so that an error rate can leave it out.
    assert metrics[_series("modelfleet_requests_total", code="503", endpoint="/predict")] == 1
    assert metrics[_series("modelfleet_requests_rejected_total", endpoint="/predict", reason="queue_full")] == 1


async def test_unknown_model_or_version_is_404_naming_what_is_served(mlp_path: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    async with live_server(settings_for(mlp_path)) as live:
        wrong_name = await live.client.post("/v2/models/other/infer", json=body)
        wrong_version = await live.client.post("/v2/models/fraud/versions/9/infer", json=body)
        right_version = await live.client.post("/v2/models/fraud/versions/2/infer", json=body)
        meta = await live.client.get("/v2/models/fraud")
        missing_meta = await live.client.get("/v2/models/fraud/versions/1")
    for r in (wrong_name, wrong_version, missing_meta):
        assert r.status_code == 404
        assert "serves model 'fraud' version '2'" in r.json()["error"]
    assert right_version.status_code == 200
    assert meta.json() == {
        "name": "fraud",
        "versions": ["2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}], "the model takes 'FP32'"),
        ([{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}], "the model takes [-1, 4]"),
        ([{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "needs 8 values, data has 4"),
        ([{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "unknown inputs ['z']"),
        ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, "a", 4]}], "must be FP32 values"),
        ([{"name": "x", "shape": [1, 4]}], "not an Open Inference Protocol request"),
    ],
)
async def test_v2_bad_tensors_are_named(mlp_path: Path, inputs: list, message: str) -> None:
    async with live_server(settings_for(mlp_path)) as live:
        r = await live.client.post("/v2/models/fraud/infer", json={"inputs": inputs})
    assert r.status_code in (400, 422), r.text
    assert message in r.json()["error"]


async def test_v2_answers_requested_outputs_with_id(tmp_path: Path) -> None:
    two = build_two_output(tmp_path / "two.onnx")
    body = {
        "id": "abc",
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}],
        "outputs": [{"name": "total"}],
    }
    async with live_server(settings_for(two)) as live:
        r = await live.client.post("/v2/models/fraud/infer", json=body)
        bad = await live.client.post("/v2/models/fraud/infer", json={**body, "outputs": [{"name": "nope"}]})
    answer = r.json()
    assert answer["id"] == "abc" and answer["model_name"] == "fraud" and answer["model_version"] == "2"
    assert answer["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [2, 1], "data": [6.0, 15.0]}]
    assert bad.status_code == 400 and "outputs ['nope'] unknown" in bad.json()["error"]


async def test_sha256_mismatch_never_becomes_ready_and_says_why(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path, sha256="0" * 64)) as live:
        ready = await live.client.get("/v2/health/ready")
        model_ready = await live.client.get("/v2/models/fraud/ready")
        predict = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
        live_answer = await live.client.get("/v2/health/live")
    actual = hashlib.sha256(mlp_path.read_bytes()).hexdigest()
    assert ready.status_code == 503 and model_ready.status_code == 503
    assert ready.json()["state"] == "failed"
    # The readiness answer is unauthenticated: it never tells the real hash of a file (no hash oracle).
    assert "sha256 mismatch" in ready.json()["reason"] and actual not in ready.text
    assert predict.status_code == 503 and "failed to load" in predict.json()["error"]
    assert live_answer.status_code == 200


async def test_matching_sha256_serves(mlp_path: Path) -> None:
    digest = hashlib.sha256(mlp_path.read_bytes()).hexdigest()
    async with live_server(settings_for(mlp_path, sha256=digest.upper())) as live:
        assert (await live.client.get("/v2/health/ready")).status_code == 200


async def test_corrupt_model_file_never_becomes_ready_and_says_why(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    async with live_server(settings_for(corrupt)) as live:
        ready = await live.client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json()["state"] == "failed" and "onnxruntime cannot load" in ready.json()["reason"]


async def test_missing_model_file_says_which_path(tmp_path: Path) -> None:
    async with live_server(settings_for(tmp_path / "nope.onnx")) as live:
        ready = await live.client.get("/v2/health/ready")
    assert "does not exist" in ready.json()["reason"] and "nope.onnx" in ready.json()["reason"]


async def test_metrics_parse_and_histograms_move(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path)) as live:
        before = _samples((await live.client.get("/metrics")).text)
        await asyncio.gather(*(live.client.post("/predict", json={"features": [1, 2, 3, 4]}) for _ in range(20)))
        await live.client.post("/predict", json={"features": [1]})
        after = _samples((await live.client.get("/metrics")).text)
        stats = (await live.client.get("/stats")).json()
    assert after[_series("modelfleet_requests_total", code="200", endpoint="/predict")] == 20
    assert after[_series("modelfleet_requests_total", code="400", endpoint="/predict")] == 1
    assert after[_series("modelfleet_request_latency_seconds_count", endpoint="/predict")] == 21
    batch_rows = _series("modelfleet_batch_size_rows_sum")
    assert after[batch_rows] - before[batch_rows] == 20
    assert after[_series("modelfleet_queue_wait_seconds_count")] >= 20
    assert after[_series("modelfleet_model_ready")] == 1
    assert after[_series("modelfleet_model_load_seconds")] > 0
    assert stats["count"] == 21 and stats["errors"] == 1
    assert stats["latency_ms"]["p50"] is not None and stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]


def _series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A sample's key in `_samples`: every series of the server carries its model and version."""
    return name, tuple(sorted({"model": "fraud", "version": "2", **labels}.items()))


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_predict_token_is_required_when_configured(mlp_path: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    async with live_server(settings_for(mlp_path, predict_token_file=str(token))) as live:
        anonymous = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
        wrong = await live.client.post(
            "/predict", json={"features": [1, 2, 3, 4]}, headers={"authorization": "Bearer nope"}
        )
        right = await live.client.post(
            "/predict", json={"features": [1, 2, 3, 4]}, headers={"authorization": "Bearer s3cret"}
        )
    assert anonymous.status_code == 401 and wrong.status_code == 401 and right.status_code == 200


async def test_draining_turns_readiness_false_at_once_but_serves_what_still_arrives(mlp_path: Path) -> None:
    async with live_server(settings_for(mlp_path)) as live:
        live.server.begin_drain()
        ready = await live.client.get("/v2/health/ready")
        r = await live.client.post("/predict", json={"features": [1, 2, 3, 4]})
    assert ready.status_code == 503 and ready.json()["state"] == "draining"
    assert r.status_code == 200
