"""Dynamic batching: merge concurrent requests into one model run.

The batcher knows nothing about HTTP. Callers submit rows (a dict of arrays
sharing their first dimension) and await their own rows of the outputs.

Policy: a batch is dispatched as soon as the model is free, carrying every row
queued at that moment (at most `max_batch_size`). Nobody waits for company that
may not come, so a lone request on an idle server runs at once; under load the
rows that arrive while one batch runs form the next one, so batches grow with
the load by themselves. `max_latency_ms` is the bound on how long a row may
wait for its batch to form while the model is free; this policy keeps that
wait near zero, and `BatchRecord.formation_wait` records it for every batch
(`rows_left` shows that a batch with room took every row that was waiting).

The model runs on one dedicated thread, which also forms the next batch the
moment a run ends: the event loop only queues rows and hands out results, so a
busy loop never delays a dispatch. A request larger than `max_batch_size` is
split across consecutive batches and reassembled. When a batch fails it is
bisected: each half is run again, and only a half that fails is split further,
so one bad request cannot fail its neighbours and k bad requests among n cost
at most about 2·k·log2(n) extra runs rather than n.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import InferenceFailed, QueueFull, RuntimeProblem, Unavailable

log = logging.getLogger("modelfleet.batching")

Feeds = dict[str, np.ndarray]
RunBatch = Callable[[Feeds], Feeds]


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Feeds]
    enqueued: float
    taken: int = 0
    done: int = 0
    chunks: list[tuple[int, Feeds]] = field(default_factory=list)


Part = tuple[_Pending, int, int]  # a request and the [start, stop) rows of it in one batch


@dataclass(frozen=True)
class BatchRecord:
    """What one model run was made of, for metrics and for tests of the policy."""

    rows: int
    requests: int
    oldest_enqueued: float
    model_free_since: float
    dispatched: float
    finished: float
    # Rows still queued when this batch was taken: a batch with room left takes them all.
    rows_left: int = 0

    @property
    def formation_wait(self) -> float:
        """How long the oldest row waited for this batch to form while the model was free."""
        return max(0.0, self.dispatched - max(self.oldest_enqueued, self.model_free_since))


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
        self._lock = threading.Lock()
        self._queue: collections.deque[_Pending] = collections.deque()
        self.queued_rows = 0
        self.history: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelfleet-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False  # the inference thread owns the queue's head while this is set
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._model_free_since = clock()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    @property
    def busy(self) -> bool:
        return self._running

    @property
    def closing(self) -> bool:
        """True once close() began: new work is refused."""
        return self._closing

    async def submit(self, feeds: Feeds, rows: int) -> Feeds:
        """Queue `rows` rows and return this caller's rows of every output."""
        if self._closing:
            raise Unavailable("the server is shutting down; retry on another replica")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[Feeds] = loop.create_future()
        with self._lock:
            if self.queued_rows + rows > self.max_queue:
                raise QueueFull(
                    f"queue full: {self.queued_rows} rows waiting, the limit is {self.max_queue}; retry later"
                )
            self._queue.append(_Pending(feeds, rows, future, self._clock()))
            self.queued_rows += rows
            start_thread = not self._running
            self._running = True
        if start_thread:
            self._idle.clear()
            self._executor.submit(self._drain)
        return await future

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let queued and running batches finish, then stop the thread."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the inference thread --------------------------------------------------------------

    def _drain(self) -> None:
        """Run batches back to back until the queue is empty."""
        while True:
            with self._lock:
                parts = self._take()
                if not parts:
                    self._running = False
                    break
                rows_left = self.queued_rows
            dispatched = self._clock()
            delivered = self._run(parts)
            finished = self._clock()
            record = BatchRecord(
                rows=sum(stop - start for _, start, stop in parts),
                requests=len(parts),
                oldest_enqueued=min(p.enqueued for p, _, _ in parts),
                model_free_since=self._model_free_since,
                dispatched=dispatched,
                finished=finished,
                rows_left=rows_left,
            )
            self._model_free_since = finished
            waits = [dispatched - p.enqueued for p, start, _ in parts if start == 0]
            self._call_in_loop(self._finish_batch, delivered, record, waits)
        self._call_in_loop(self._set_idle_if_quiet)

    def _call_in_loop(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
            self._loop.call_soon_threadsafe(callback, *args)

    def _take(self) -> list[Part]:
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
    def _merge(parts: list[Part]) -> Feeds:
        if len(parts) == 1:
            pending, start, stop = parts[0]
            if start == 0 and stop == pending.rows:
                return pending.feeds
            return {name: array[start:stop] for name, array in pending.feeds.items()}
        return {
            name: np.concatenate([p.feeds[name][start:stop] for p, start, stop in parts]) for name in parts[0][0].feeds
        }

    def _run(self, parts: list[Part]) -> list[tuple[Part, Feeds | Exception]]:
        try:
            outputs = self._run_batch(self._merge(parts))
        except Exception as exc:
            if len(parts) == 1:
                return [(parts[0], exc)]
            # Find the culprits by halves, so the neighbours of a bad request still get their answers.
            middle = len(parts) // 2
            return self._run(parts[:middle]) + self._run(parts[middle:])
        delivered: list[tuple[Part, Feeds | Exception]] = []
        offset = 0
        for part in parts:
            count = part[2] - part[1]
            delivered.append((part, {name: out[offset : offset + count] for name, out in outputs.items()}))
            offset += count
        return delivered

    # -- back on the event loop --------------------------------------------------------------

    def _finish_batch(
        self, delivered: list[tuple[Part, Feeds | Exception]], record: BatchRecord, waits: list[float]
    ) -> None:
        for (pending, start, _), result in delivered:
            if isinstance(result, Exception):
                if not pending.future.done():
                    pending.future.set_exception(_as_problem(result))
            else:
                self._deliver(pending, start, result)
        self.history.append(record)
        if self._on_batch is not None:
            self._on_batch(record, waits)

    def _set_idle_if_quiet(self) -> None:
        if not self._running:
            self._idle.set()

    @staticmethod
    def _deliver(pending: _Pending, start: int, chunk: Feeds) -> None:
        if pending.future.done():
            return
        pending.done += len(next(iter(chunk.values())))
        if not pending.chunks and pending.done == pending.rows:
            pending.future.set_result(chunk)
            return
        pending.chunks.append((start, chunk))
        if pending.done == pending.rows:
            pending.chunks.sort(key=lambda c: c[0])
            pending.future.set_result(
                {name: np.concatenate([c[name] for _, c in pending.chunks]) for name in pending.chunks[0][1]}
            )


def _as_problem(exc: Exception) -> RuntimeProblem:
    """What the caller of a failed request sees: the model's own verdict on its input, or a 500."""
    if isinstance(exc, RuntimeProblem):
        return exc
    # Not the request's fault as far as anyone can tell: the details go to the log, not to the client.
    log.error("inference failed: %s: %s", type(exc).__name__, exc)
    return InferenceFailed("inference failed; the server log says why")
