"""The real ModelFleet operator (kopf) running in the test's event loop, stoppable and killable."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.runner import operate

# The production default is 10 s; tests want status to follow the children quickly.
TEST_RESYNC_SECONDS = 0.5


class InProcessOperator:
    """`start()`, `stop()` (graceful, like SIGTERM), `kill()` (abrupt, like SIGKILL), `restart()`."""

    def __init__(self, config: OperatorConfig, *, resync_seconds: float = TEST_RESYNC_SECONDS) -> None:
        self.config = config
        self.resync_seconds = resync_seconds
        self.starts = 0
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, timeout: float = 30.0) -> None:
        if self.running:
            raise RuntimeError("the operator is already running")
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            operate(self.config, stop_flag=self._stop, ready_flag=ready, resync_seconds=self.resync_seconds),
            name=f"modelfleet operator #{self.starts}",
        )
        self.starts += 1
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task.done():
                self._task.result()  # raises what stopped it
            raise TimeoutError(f"the operator did not become ready within {timeout}s")

    async def stop(self, timeout: float = 30.0) -> None:
        if self._task is None:
            return
        assert self._stop is not None
        self._stop.set()
        task, self._task = self._task, None
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise TimeoutError(f"the operator did not stop within {timeout}s")
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def kill(self) -> None:
        """Stop without any cleanup, as a killed pod would: finalizers and half-done work stay."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def __aenter__(self) -> InProcessOperator:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
