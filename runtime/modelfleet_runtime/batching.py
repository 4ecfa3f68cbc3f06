"""Dynamic batching: merge concurrent requests into one model run.

The batcher knows nothing about HTTP. Callers submit rows (a dict of arrays
sharing their first dimension) and await their own rows of the outputs. One
worker task forms batches; the model runs on a dedicated thread, off the event
loop.

Policy: a batch is dispatched as soon as the model is free, carrying every row
queued at that moment (at most `max_batch_size`). Nobody waits for company that
may not come, so a lone request on an idle server runs at once; under load the
rows that arrive while one batch runs form the next one. A request larger than
`max_batch_size` is split across consecutive batches and reassembled. When a
batch fails, each request in it is retried alone, so one bad request cannot
fail its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import InferenceFailed, QueueFull, Unavailable

Feeds = dict[str, np.ndarray]
RunBatch = Callable[[Feeds], Feeds]


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float
    taken: int = 0
    done: int = 0
    chunks: list[tuple[int, Feeds]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchRecord:
    """What one model run was made of, for metrics and for tests of the policy."""

    rows: int
    requests: int
    oldest_enqueued: float
    model_free_since: float
    dispatched: float
    finished: float

    @property
    def formation_wait(self) -> float:
        """How long the oldest row waited for this batch to form while the model was free."""
        return self.dispatched - max(self.oldest_enqueued, self.model_free_since)


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_latency_ms: float = 100.0,
        max_queue: int = 1024,
        on_batch: Callable[[BatchRecord, list[float]], None] | None = None,
        history: int = 4096,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._clock = clock
        self._queue: collections.deque[_Pending] = collections.deque()
        self.queued_rows = 0
        self.history: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelfleet-infer")
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False
        self._model_free_since = clock()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="modelfleet-batcher")

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    async def submit(self, feeds: Feeds, rows: int) -> Feeds:
        """Queue `rows` rows and return this caller's rows of every output."""
        if self._closing:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self.queued_rows + rows > self.max_queue:
            raise QueueFull(f"queue full: {self.queued_rows} rows waiting, the limit is {self.max_queue}; retry later")
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(feeds, rows, future, self._clock()))
        self.queued_rows += rows
        self._wakeup.set()
        return await future

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let queued and running batches finish, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            parts = self._take()
            dispatched = self._clock()
            self._busy = True
            try:
                await self._run(loop, parts)
            finally:
                self._busy = False
                finished = self._clock()
                record = BatchRecord(
                    rows=sum(stop - start for _, start, stop in parts),
                    requests=len(parts),
                    oldest_enqueued=min(p.enqueued for p, _, _ in parts),
                    model_free_since=self._model_free_since,
                    dispatched=dispatched,
                    finished=finished,
                )
                self._model_free_since = finished
                self.history.append(record)
                if self._on_batch is not None:
                    self._on_batch(record, [dispatched - p.enqueued for p, start, _ in parts if start == 0])

    def _take(self) -> list[tuple[_Pending, int, int]]:
        room = self.max_batch_size
        parts = []
        while self._queue and room:
            pending = self._queue[0]
            if pending.future.done():  # the caller went away: skip its remaining rows
                self._queue.popleft()
                self.queued_rows -= pending.rows - pending.taken
                continue
            count = min(pending.rows - pending.taken, room)
            parts.append((pending, pending.taken, pending.taken + count))
            pending.taken += count
            room -= count
            self.queued_rows -= count
            if pending.taken == pending.rows:
                self._queue.popleft()
        return parts

    @staticmethod
    def _merge(parts: list[tuple[_Pending, int, int]]) -> Feeds:
        if len(parts) == 1:
            pending, start, stop = parts[0]
            if start == 0 and stop == pending.rows:
                return pending.feeds
            return {name: array[start:stop] for name, array in pending.feeds.items()}
        return {
            name: np.concatenate([p.feeds[name][start:stop] for p, start, stop in parts])
            for name in parts[0][0].feeds
        }

    async def _run(self, loop: asyncio.AbstractEventLoop, parts: list[tuple[_Pending, int, int]]) -> None:
        if not parts:
            return
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, self._merge(parts))
        except Exception as exc:
            if len(parts) == 1:
                self._fail(parts[0][0], exc)
                return
            # Find the culprit: each request alone, so its neighbours still get their answers.
            for part in parts:
                await self._run(loop, [part])
            return
        offset = 0
        for pending, start, stop in parts:
            count = stop - start
            self._deliver(pending, start, {name: out[offset:offset + count] for name, out in outputs.items()})
            offset += count

    @staticmethod
    def _deliver(pending: _Pending, start: int, chunk: Feeds) -> None:
        if pending.future.done():
            return
        pending.done += next(iter(chunk.values())).shape[0] if chunk else 0
        if not pending.chunks and pending.done == pending.rows:
            pending.future.set_result(chunk)
            return
        pending.chunks.append((start, chunk))
        if pending.done == pending.rows:
            pending.chunks.sort(key=lambda c: c[0])
            pending.future.set_result({
                name: np.concatenate([c[name] for _, c in pending.chunks]) for name in pending.chunks[0][1]
            })

    @staticmethod
    def _fail(pending: _Pending, exc: Exception) -> None:
        if not pending.future.done():
            pending.future.set_exception(InferenceFailed(f"inference failed: {exc}"))
