"""What the model refuses: values (a 422 naming the input, found by bisecting the batch; issue 11, finding 12)
and external data outside its folder (finding 13)."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from modelfleet_runtime.batching import Batcher
from modelfleet_runtime.errors import InvalidValue
from modelfleet_runtime.model import OnnxModel
from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.onnx_models import TABLE_ROWS, build_lookup, build_mlp, with_external_weights
from tests.support.polling import wait_for


@pytest.fixture
def lookup_path(tmp_path: Path) -> Path:
    return build_lookup(tmp_path / "lookup.onnx")


def index_rows(*indices: int) -> dict[str, np.ndarray]:
    return {"idx": np.array(indices, dtype=np.int64).reshape(-1, 1)}


async def test_bad_requests_in_a_batch_cost_a_logarithmic_number_of_runs(lookup_path: Path) -> None:
    model = OnnxModel(lookup_path)
    entered, gate = threading.Event(), threading.Event()
    runs: list[int] = []

    def counted(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        gate.wait(60)
        runs.append(len(feeds["idx"]))
        return model.run(feeds)

    batcher = Batcher(counted, max_batch_size=64, max_queue=1024)
    batcher.start()
    opener = asyncio.ensure_future(batcher.submit(index_rows(0), 1))
    await wait_for(entered.is_set)  # the model is busy: the next 64 requests form one batch
    bad = {5, 17, 40, 63}
    indices = [TABLE_ROWS + i if i in bad else i % TABLE_ROWS for i in range(64)]
    requests = [asyncio.ensure_future(batcher.submit(index_rows(i), 1)) for i in indices]
    await wait_for(lambda: batcher.queued_rows == 64)
    gate.set()
    await opener
    results = await asyncio.gather(*requests, return_exceptions=True)
    await batcher.close()

    assert runs[1] == 64, "the 64 requests were meant to form one batch"
    # Bisection: each failing half is split again; 2 runs per level per bad request at most.
    assert len(runs) - 1 <= 1 + 2 * len(bad) * math.ceil(math.log2(64))
    for position, (index, result) in enumerate(zip(indices, results, strict=True)):
        if position in bad:
            assert isinstance(result, InvalidValue), result
            assert result.status == 422 and "input 'idx'" in result.message
        else:
            assert not isinstance(result, BaseException), result
            np.testing.assert_array_equal(result["y"], [[2.0 * index, 2.0 * index + 1]])


async def test_a_value_the_model_refuses_is_a_422_naming_the_input(lookup_path: Path) -> None:
    settings = Settings(model=str(lookup_path), name="lookup", warmup_iterations=1)
    async with live_server(settings) as live:
        v2 = await live.client.post(
            "/v2/models/lookup/infer",
            json={"inputs": [{"name": "idx", "shape": [2, 1], "datatype": "INT64", "data": [1, TABLE_ROWS + 3]}]},
        )
        simple = await live.client.post("/predict", json={"features": [TABLE_ROWS]})
        good = await live.client.post("/predict", json={"instances": [[2], [3]]})
        errors = await live.client.get("/metrics")
    for answer in (v2, simple):
        assert answer.status_code == 422, answer.text
        message = answer.json()["error"]
        assert "input 'idx'" in message and "Gather node 'lookup'" in message
        assert "ONNXRuntimeError" not in message and "INVALID_ARGUMENT" not in message
    assert good.json()["predictions"] == [[4.0, 5.0], [6.0, 7.0]]
    assert 'code="500"' not in errors.text


async def test_a_model_whose_external_data_lies_outside_its_folder_never_serves(tmp_path: Path) -> None:
    beside, escaping = tmp_path / "beside", tmp_path / "escaping"
    beside.mkdir()
    escaping.mkdir()
    served = with_external_weights(build_mlp(beside / "m.onnx"), "weights.bin")
    refused = with_external_weights(build_mlp(escaping / "m.onnx"), "../weights.bin")
    async with live_server(Settings(model=str(served), warmup_iterations=1)) as live:
        assert (await live.client.get("/v2/health/ready")).status_code == 200
    async with live_server(Settings(model=str(refused), warmup_iterations=1)) as live:
        answer = await live.client.get("/v2/health/ready")
    assert answer.status_code == 503
    assert "External data path" in answer.json()["reason"]
