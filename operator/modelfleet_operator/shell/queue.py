"""The per-model work queue: one reconcile of a model at a time, bursts of events coalesced.

`enqueue(key, delay)` asks for a reconcile of the model `key` (namespace,
model) no later than `delay` seconds from now. Asking again before it ran only
moves that time earlier, so a burst of watch events becomes one reconcile
(after `COALESCE_SECONDS`, which lets the burst finish). A key never runs in
two workers at once: a request that arrives while it runs makes it run once
more afterwards, from a fresh snapshot. At most `workers` models reconcile
concurrently.

The reconcile returns when it wants to run again without an event (a hold that
ends, a canary analysis that is due), or None; an error retries the key with a
back-off (the API server's Retry-After when it gave one). `resync` enqueues
every known model, the periodic safety net of `resync-seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K")

COALESCE_SECONDS = 0.05
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0

logger = logging.getLogger("modelfleet_operator.queue")


class RetryLater(Exception):
    """A reconcile that could not finish and should run again after `delay` seconds."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class WorkQueue(Generic[K]):
    """See the module docstring. Run it with `await queue.run()` in the operator's event loop."""

    def __init__(
        self,
        work: Callable[[K], Awaitable[float | None]],
        *,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._work = work
        self._workers = workers
        self._clock = clock
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._failures: dict[K, int] = {}
        self._wakeup = asyncio.Event()
        self._stopped = False
        self.reconciles = 0
        self.errors = 0

    def enqueue(self, key: K, delay: float = COALESCE_SECONDS) -> None:
        """Reconcile `key` no later than `delay` seconds from now."""
        if key in self._running and delay <= COALESCE_SECONDS:
            self._again.add(key)
            return
        at = self._clock() + max(delay, 0.0)
        if key in self._due and self._due[key] <= at:
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        self._wakeup.set()

    def enqueue_all(self, keys: Iterable[K], delay: float = COALESCE_SECONDS) -> None:
        for key in keys:
            self.enqueue(key, delay)

    def pending(self) -> int:
        return len(self._due) + len(self._running)

    def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()

    async def run(self) -> None:
        """Work until `stop()` (or cancellation); each key is reconciled by one worker at a time."""
        tasks: set[asyncio.Task[None]] = set()
        limit = asyncio.Semaphore(self._workers)
        try:
            while not self._stopped:
                key = self._next_due()
                if key is None:
                    await self._sleep()
                    continue
                await limit.acquire()
                self._running.add(key)
                task = asyncio.create_task(self._one(key, limit), name=f"reconcile {key}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _next_due(self) -> K | None:
        now = self._clock()
        while self._heap:
            at, _, key = self._heap[0]
            if self._due.get(key) != at:
                heapq.heappop(self._heap)  # superseded by an earlier request
                continue
            if at > now:
                return None
            heapq.heappop(self._heap)
            if key in self._running:
                # Running now: it runs again right after, from a fresh snapshot.
                del self._due[key]
                self._again.add(key)
                continue
            del self._due[key]
            return key
        return None

    async def _sleep(self) -> None:
        self._wakeup.clear()
        timeout = None
        if self._heap:
            timeout = max(self._heap[0][0] - self._clock(), 0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    async def _one(self, key: K, limit: asyncio.Semaphore) -> None:
        again_after: float | None = None
        try:
            self.reconciles += 1
            again_after = await self._work(key)
            self._failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except RetryLater as retry:
            again_after = self._backoff(key, retry.delay)
            logger.warning(f"Reconcile of {key} retries in {again_after:.1f}s: {retry}")
        except Exception:
            again_after = self._backoff(key, None)
            logger.exception(f"Reconcile of {key} failed; it retries in {again_after:.1f}s")
        finally:
            self._running.discard(key)
            limit.release()
        if key in self._again:
            self._again.discard(key)
            self.enqueue(key, 0.0)
        if again_after is not None:
            self.enqueue(key, again_after)
        self._wakeup.set()

    def _backoff(self, key: K, delay: float | None) -> float:
        self.errors += 1
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if delay is not None:
            return delay
        return float(min(BACKOFF_INITIAL_SECONDS * 2 ** min(failures - 1, 10), BACKOFF_MAX_SECONDS))


__all__ = ["COALESCE_SECONDS", "RetryLater", "WorkQueue"]
