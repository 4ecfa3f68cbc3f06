"""The batcher alone: its policy, splitting, isolation of failures and shutdown."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from modelfleet_runtime.batching import Batcher
from modelfleet_runtime.errors import InferenceFailed, QueueFull, Unavailable


def doubler(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": feeds["x"] * 2}


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


async def test_a_request_larger_than_the_batch_is_split_and_reassembled_in_order() -> None:
    batcher = Batcher(doubler, max_batch_size=4)
    batcher.start()
    out = await batcher.submit(rows(0, 10), 10)
    np.testing.assert_array_equal(out["y"][:, 0], np.arange(10) * 2)
    assert [r.rows for r in batcher.history] == [4, 4, 2]
    await batcher.close()


async def test_mixed_single_and_multi_row_requests_each_get_their_own_rows() -> None:
    gate = threading.Event()

    def gated(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)
        return doubler(feeds)

    batcher = Batcher(gated, max_batch_size=5)
    batcher.start()
    sizes = [1, 3, 1, 7, 2, 1, 4]
    starts = np.cumsum([0, *sizes[:-1]]) * 100
    tasks = [asyncio.ensure_future(batcher.submit(rows(int(s), n), n)) for s, n in zip(starts, sizes, strict=True)]
    await asyncio.sleep(0)  # let every submit enqueue while the first batch is held
    gate.set()
    results = await asyncio.gather(*tasks)
    for s, n, out in zip(starts, sizes, results, strict=True):
        np.testing.assert_array_equal(out["y"][:, 0], (np.arange(n) + s) * 2)
    assert all(r.rows <= 5 for r in batcher.history)
    assert any(r.requests > 1 for r in batcher.history)
    await batcher.close()


async def test_one_failing_request_does_not_fail_its_neighbours(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    def picky(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)
        if (feeds["x"] < 0).any():
            raise ValueError("negative input")
        return doubler(feeds)

    batcher = Batcher(picky, max_batch_size=16)
    batcher.start()
    blocker = asyncio.ensure_future(batcher.submit(rows(0, 1), 1))
    await asyncio.sleep(0)
    good = [asyncio.ensure_future(batcher.submit(rows(i, 1), 1)) for i in range(1, 5)]
    bad = asyncio.ensure_future(batcher.submit({"x": np.array([[-1.0]], dtype=np.float32)}, 1))
    gate.set()
    assert (await blocker)["y"][0, 0] == 0
    assert [float((await g)["y"][0, 0]) for g in good] == [2.0, 4.0, 6.0, 8.0]
    # The client is not told the internal error; the log is.
    with pytest.raises(InferenceFailed, match="the server log says why"):
        await bad
    assert "ValueError: negative input" in caplog.text
    await batcher.close()


async def test_queue_bound_refuses_rows_beyond_it() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda f: (gate.wait(10), doubler(f))[1], max_batch_size=2, max_queue=3)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(rows(0, 2), 2))
    while not batcher.busy or batcher.queued_rows:
        await asyncio.sleep(0.001)
    queued = asyncio.ensure_future(batcher.submit(rows(0, 3), 3))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="3 rows waiting, the limit is 3"):
        await batcher.submit(rows(0, 1), 1)
    gate.set()
    await running
    await queued
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda f: (gate.wait(10), doubler(f))[1], max_batch_size=2)
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(rows(i, 1), 1)) for i in range(5)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.close(timeout=10))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):
        await batcher.submit(rows(0, 1), 1)
    gate.set()
    await closing
    assert [float((await p)["y"][0, 0]) for p in pending] == [0.0, 2.0, 4.0, 6.0, 8.0]


async def test_a_caller_that_went_away_does_not_cost_a_model_run() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def record(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)
        seen.append(len(feeds["x"]))
        return doubler(feeds)

    batcher = Batcher(record, max_batch_size=8)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(rows(0, 1), 1))
    await asyncio.sleep(0)
    abandoned = asyncio.ensure_future(batcher.submit(rows(0, 5), 5))
    kept = asyncio.ensure_future(batcher.submit(rows(0, 2), 2))
    await asyncio.sleep(0)
    abandoned.cancel()
    gate.set()
    await first
    await kept
    assert seen == [1, 2]
    assert batcher.queued_rows == 0
    await batcher.close()
