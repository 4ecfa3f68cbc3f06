"""Large JSON bodies are parsed off the event loop, with the same answers (issue 11, finding 11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from modelfleet_runtime.settings import Settings
from tests.support.live_server import Live, live_server
from tests.support.onnx_models import build_mlp
from tests.support.polling import wait_for

WIDTH = 512
JSON = {"content-type": "application/json"}


def sample(live: Live, name: str) -> float:
    """The value of the server's series `name` for its model and version (0 when it has none yet)."""
    labels = {"model": live.server.settings.name, "version": live.server.settings.model_version}
    return live.server.registry.get_sample_value(name, labels) or 0.0


def parsing(live: Live) -> float:
    """Large bodies the server has queued for, or is running through, its parsing process."""
    return sample(live, "modelfleet_large_bodies_parsing")


def expected(model: Path, rows: np.ndarray) -> list[float]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [float(v) for v in session.run(None, {"x": rows.astype(np.float32)})[0][:, 0]]


async def test_a_small_request_is_answered_while_large_bodies_are_still_being_parsed(tmp_path: Path) -> None:
    model = build_mlp(tmp_path / "wide.onnx", (WIDTH, 8, 1))
    rows = np.round(np.random.default_rng(0).standard_normal((1000, WIDTH)), 3)
    large = orjson.dumps({"instances": rows.tolist()})
    assert 3_000_000 < len(large) < 4 * 1024 * 1024  # four bodies of about 4 MB, within the default limit
    settings = Settings(model=str(model), name="wide", warmup_iterations=1, max_queue=8192)
    async with live_server(settings) as live:
        uploads = [asyncio.ensure_future(live.client.post("/predict", content=large, headers=JSON)) for _ in range(4)]
        await wait_for(lambda: parsing(live) == 4, timeout=120)
        small = await live.client.post("/predict", json={"features": [0.5] * WIDTH})
        # Ordering, not timing: the small answer came while large bodies were still being parsed.
        still_parsing = parsing(live)
        answers = await asyncio.gather(*uploads)
    assert small.status_code == 200
    assert still_parsing >= 1
    assert [a.status_code for a in answers] == [200] * 4
    np.testing.assert_allclose(answers[0].json()["predictions"], expected(model, rows), rtol=1e-5, atol=1e-6)


async def test_a_large_body_gets_the_answers_and_errors_a_small_one_gets(mlp_path: Path) -> None:
    settings = Settings(model=str(mlp_path), name="fraud", warmup_iterations=1, max_queue=64, large_body_bytes=512)
    rows = np.round(np.random.default_rng(1).standard_normal((60, 4)), 4)
    bad_value = [[1.0, 2.0, 3.0, 4.0]] * 30 + [[1.0, "two", 3.0, 4.0]]
    v2_rows = {"inputs": [{"name": "x", "shape": [60, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    v2_shape = {"inputs": [{"name": "x", "shape": [60, 3], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    async with live_server(settings) as live:
        ok = await live.client.post("/predict", json={"instances": rows.tolist()})
        not_a_number = await live.client.post("/predict", json={"instances": bad_value})
        too_many = await live.client.post("/predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]] * 65})
        v2_ok = await live.client.post("/v2/models/fraud/infer", json=v2_rows)
        v2_bad = await live.client.post("/v2/models/fraud/infer", json=v2_shape)
        handed_over = sample(live, "modelfleet_large_bodies_total")
    assert handed_over == 5
    want = expected(mlp_path, rows)
    np.testing.assert_allclose(ok.json()["predictions"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v2_ok.json()["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
    assert not_a_number.status_code == 422 and "row 30 feature 1 is not a number" in not_a_number.json()["error"]
    assert too_many.status_code == 413 and "65 rows in one request; the limit is 64" in too_many.json()["error"]
    assert v2_bad.status_code == 400 and "the model takes [-1, 4]" in v2_bad.json()["error"]
