"""The batcher alone: its policy, splitting, isolation of failures and shutdown.

The model runs on the batcher's own thread; a `HeldModel` keeps a batch running
until the test releases it, and the tests wait on what the batcher shows
(`busy`, `queued_rows`, the batches the model saw) rather than on the scheduler.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from modelfleet_runtime.batching import Batcher
from modelfleet_runtime.errors import InferenceFailed, QueueFull, Unavailable
from tests.support.polling import wait_for

Feeds = dict[str, np.ndarray]


def doubler(feeds: Feeds) -> Feeds:
    return {"y": feeds["x"] * 2}


def rows(start: int, count: int) -> Feeds:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


class HeldModel:
    """A model run that records the rows of each batch, then waits until the test releases it."""

    def __init__(self, run: Callable[[Feeds], Feeds] = doubler) -> None:
        self.run = run
        self.batches: list[int] = []  # rows per batch, in the order the model saw them
        self.released = threading.Event()

    def __call__(self, feeds: Feeds) -> Feeds:
        self.batches.append(len(feeds["x"]))
        self.released.wait(10)
        return self.run(feeds)

    def release(self) -> None:
        self.released.set()


async def running_alone(batcher: Batcher) -> None:
    """Until the model runs a batch and nothing else is queued."""
    await wait_for(lambda: batcher.busy and batcher.queued_rows == 0, message="the first batch to run")


async def test_a_request_larger_than_the_batch_is_split_and_reassembled_in_order() -> None:
    batcher = Batcher(doubler, max_batch_size=4)
    batcher.start()
    out = await batcher.submit(rows(0, 10), 10)
    np.testing.assert_array_equal(out["y"][:, 0], np.arange(10) * 2)
    assert [r.rows for r in batcher.history] == [4, 4, 2]
    await batcher.close()


async def test_mixed_single_and_multi_row_requests_each_get_their_own_rows() -> None:
    model = HeldModel()
    batcher = Batcher(model, max_batch_size=5)
    batcher.start()
    sizes = [1, 3, 1, 7, 2, 1, 4]
    starts = np.cumsum([0, *sizes[:-1]]) * 100
    tasks = [asyncio.ensure_future(batcher.submit(rows(int(s), n), n)) for s, n in zip(starts, sizes, strict=True)]
    # Every request is queued while the first batch is held.
    await wait_for(lambda: model.batches and batcher.queued_rows + model.batches[0] == sum(sizes))
    model.release()
    results = await asyncio.gather(*tasks)
    for s, n, out in zip(starts, sizes, results, strict=True):
        np.testing.assert_array_equal(out["y"][:, 0], (np.arange(n) + s) * 2)
    assert all(r.rows <= 5 for r in batcher.history)
    assert sum(r.rows for r in batcher.history) == sum(sizes)
    assert any(r.requests > 1 for r in batcher.history)
    await batcher.close()


async def test_one_failing_request_does_not_fail_its_neighbours(caplog: pytest.LogCaptureFixture) -> None:
    def picky(feeds: Feeds) -> Feeds:
        if (feeds["x"] < 0).any():
            raise ValueError("negative input")
        return doubler(feeds)

    model = HeldModel(picky)
    batcher = Batcher(model, max_batch_size=16)
    batcher.start()
    blocker = asyncio.ensure_future(batcher.submit(rows(0, 1), 1))
    await running_alone(batcher)
    good = [asyncio.ensure_future(batcher.submit(rows(i, 1), 1)) for i in range(1, 5)]
    bad = asyncio.ensure_future(batcher.submit({"x": np.array([[-1.0]], dtype=np.float32)}, 1))
    await wait_for(lambda: batcher.queued_rows == 5)  # all five will form one batch
    model.release()
    assert (await blocker)["y"][0, 0] == 0
    assert [float((await g)["y"][0, 0]) for g in good] == [2.0, 4.0, 6.0, 8.0]
    # The client is not told the internal error; the log is.
    with pytest.raises(InferenceFailed, match="the server log says why"):
        await bad
    assert "ValueError: negative input" in caplog.text
    # The batch of five failed and was bisected: 5 -> 2 + 3 -> (2 ok) 1 + 2 -> (1 ok) 1 + 1.
    assert model.batches == [1, 5, 2, 3, 1, 2, 1, 1]
    await batcher.close()


async def test_queue_bound_refuses_rows_beyond_it() -> None:
    model = HeldModel()
    batcher = Batcher(model, max_batch_size=2, max_queue=3)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(rows(0, 2), 2))
    await running_alone(batcher)
    queued = asyncio.ensure_future(batcher.submit(rows(0, 3), 3))
    await wait_for(lambda: batcher.queued_rows == 3)
    with pytest.raises(QueueFull, match="3 rows waiting, the limit is 3"):
        await batcher.submit(rows(0, 1), 1)
    model.release()
    await running
    await queued
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    model = HeldModel()
    batcher = Batcher(model, max_batch_size=2)
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(rows(i, 1), 1)) for i in range(5)]
    await wait_for(lambda: model.batches and batcher.queued_rows + model.batches[0] == 5)
    closing = asyncio.ensure_future(batcher.close(timeout=10))
    await wait_for(lambda: batcher.closing)
    with pytest.raises(Unavailable):
        await batcher.submit(rows(0, 1), 1)
    model.release()
    await closing
    assert [float((await p)["y"][0, 0]) for p in pending] == [0.0, 2.0, 4.0, 6.0, 8.0]


async def test_a_caller_that_went_away_does_not_cost_a_model_run() -> None:
    model = HeldModel()
    batcher = Batcher(model, max_batch_size=8)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(rows(0, 1), 1))
    await running_alone(batcher)
    abandoned = asyncio.ensure_future(batcher.submit(rows(0, 5), 5))
    kept = asyncio.ensure_future(batcher.submit(rows(0, 2), 2))
    await wait_for(lambda: batcher.queued_rows == 7)
    abandoned.cancel()
    model.release()
    await first
    await kept
    assert model.batches == [1, 2]
    assert batcher.queued_rows == 0
    await batcher.close()
