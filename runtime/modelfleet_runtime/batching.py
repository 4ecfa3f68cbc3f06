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
busy loop never delays a dispatch. One exception: with `run_inline` set (a model
whose run is known to be short), a request submitted with `lone=True` (the caller
knows no other request is in the server) while nothing is queued or running is
run at once on the caller's thread, without the two thread wake-ups of the hop.
A request larger than `max_batch_size` is split across consecutive batches
and reassembled. When a batch fails it is bisected: each half is run again, and
only a half that fails is split further, so one bad request cannot fail its neighbours and k bad requests among n cost
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
# Called with the (feeds, outputs) of every request a run completed, on the thread that ran it and
# before their results go back: one tag per request (the prediction log's request ids), or None.
Record = Callable[[list[tuple[Feeds, Feeds]]], list[str | None]]
Result = tuple[Feeds, str | None]


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Result]
    enqueued: float
    logged: bool = True  # passed to `record` once answered
    taken: int = 0
    # Only the inference thread reads and writes these: the rows answered so far, and whether a part failed.
    done: int = 0
    failed: bool = False
    chunks: list[tuple[int, Feeds]] = field(default_factory=list)


Part = tuple[_Pending, int, int]  # a request and the [start, stop) rows of it in one batch
Done = tuple[_Pending, Feeds | Exception, str | None]  # a finished request: its outputs (or failure) and tag


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
    # Run on the submitting thread (a lone request, run_inline) rather than the inference thread.
    inline: bool = False

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
        record: Record | None = None,
        history: int = 4096,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._record = record
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
        # Lone requests run on the caller's thread (see the module docstring); ModelServer sets it at warmup.
        self.run_inline = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    @property
    def busy(self) -> bool:
        return self._running

    @property
    def closing(self) -> bool:
        """True once close() began: new work is refused."""
        return self._closing

    async def submit(self, feeds: Feeds, rows: int, *, lone: bool = False) -> Feeds:
        """Queue `rows` rows and return this caller's rows of every output (see submit_tagged)."""
        return (await self.submit_tagged(feeds, rows, lone=lone))[0]

    async def submit_tagged(self, feeds: Feeds, rows: int, *, lone: bool = False, logged: bool = True) -> Result:
        """This caller's rows of every output and the tag `record` gave them (None when `logged` is false).

        `lone`: no other request is in the server, so a short run may happen right here (run_inline).
        """
        if self._closing:
            raise Unavailable("the server is shutting down; retry on another replica")
        if lone and self.run_inline and rows <= self.max_batch_size and not self._running and not self._queue:
            return self._run_here(feeds, rows, logged)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[Result] = loop.create_future()
        with self._lock:
            if self.queued_rows + rows > self.max_queue:
                raise QueueFull(
                    f"queue full: {self.queued_rows} rows waiting, the limit is {self.max_queue}; retry later"
                )
            self._queue.append(_Pending(feeds, rows, future, self._clock(), logged))
            self.queued_rows += rows
            start_thread = not self._running
            self._running = True
        if start_thread:
            self._idle.clear()
            self._executor.submit(self._drain)
        return await future

    def _run_here(self, feeds: Feeds, rows: int, logged: bool) -> Result:
        """One request's run on the calling thread, recorded as a batch of its own."""
        enqueued = self._clock()
        try:
            outputs = self._run_batch(feeds)
        except Exception as exc:
            raise _as_problem(exc) from None
        finally:
            finished = self._clock()
            record = BatchRecord(rows, 1, enqueued, self._model_free_since, enqueued, finished, inline=True)
            self._model_free_since = finished
            self.history.append(record)
            if self._on_batch is not None:
                self._on_batch(record, [0.0])
        return outputs, self._tags([(feeds, outputs)])[0] if logged else None

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
            self._call_in_loop(self._finish_batch, self._complete(delivered), record, waits)
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
            if pending.future.done() or pending.failed:  # the caller went away, or a part failed: skip the rest
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

    def _complete(self, delivered: list[tuple[Part, Feeds | Exception]]) -> list[Done]:
        """The requests this run finished (a failed part fails its request), tagged by `record` in one call."""
        done: list[tuple[_Pending, Feeds | Exception]] = []
        for (pending, start, _), result in delivered:
            if pending.failed:
                continue
            if isinstance(result, Exception):
                pending.failed = True
                done.append((pending, result))
                continue
            pending.done += len(next(iter(result.values())))
            pending.chunks.append((start, result))
            if pending.done == pending.rows:
                done.append((pending, _assemble(pending.chunks)))
        tags: list[str | None] = [None] * len(done)
        answered = [
            (i, (p.feeds, result))
            for i, (p, result) in enumerate(done)
            if p.logged and not isinstance(result, Exception) and not p.future.done()
        ]
        if answered:
            for (i, _), tag in zip(answered, self._tags([a for _, a in answered]), strict=True):
                tags[i] = tag
        return [(p, result, tag) for (p, result), tag in zip(done, tags, strict=True)]

    def _tags(self, answered: list[tuple[Feeds, Feeds]]) -> list[str | None]:
        """`record`'s tags for these answers; if it fails, the answers still go back, untagged."""
        if self._record is None:
            return [None] * len(answered)
        try:
            return self._record(answered)
        except Exception:
            log.exception("recording %d answer(s) failed; they are answered without a request_id", len(answered))
            return [None] * len(answered)

    # -- back on the event loop --------------------------------------------------------------

    def _finish_batch(self, done: list[Done], record: BatchRecord, waits: list[float]) -> None:
        for pending, result, tag in done:
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(_as_problem(result))
            else:
                pending.future.set_result((result, tag))
        self.history.append(record)
        if self._on_batch is not None:
            self._on_batch(record, waits)

    def _set_idle_if_quiet(self) -> None:
        if not self._running:
            self._idle.set()


def _assemble(chunks: list[tuple[int, Feeds]]) -> Feeds:
    """A request's outputs from the chunks of it that consecutive batches ran."""
    if len(chunks) == 1:
        return chunks[0][1]
    chunks.sort(key=lambda c: c[0])
    return {name: np.concatenate([c[name] for _, c in chunks]) for name in chunks[0][1]}


def _as_problem(exc: Exception) -> RuntimeProblem:
    """What the caller of a failed request sees: the model's own verdict on its input, or a 500."""
    if isinstance(exc, RuntimeProblem):
        return exc
    # Not the request's fault as far as anyone can tell: the details go to the log, not to the client.
    log.error("inference failed: %s: %s", type(exc).__name__, exc)
    return InferenceFailed("inference failed; the server log says why")
