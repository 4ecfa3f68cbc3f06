"""The real ModelFleet operator (kopf), in this process, stoppable and killable.

It runs in its own thread with its own event loop, as kopf's documentation
recommends for embedding: when kopf stops it cancels every task created in its
loop after it started, which in the test's loop would include the test itself,
the emulator's streams and the test kubelet. The operator reaches the emulated
API server over TCP like any client, so the separation costs nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.runner import operate


class InProcessOperator:
    """`start()`, `stop()` (graceful, like SIGTERM), `kill()` (abrupt, like SIGKILL), `restart()`."""

    def __init__(self, config: OperatorConfig, *, resync_seconds: float | None = None) -> None:
        # None: the operator's own default resync, so that what passes is the event path (issue 10); the
        # tests used 0.5 s, which hid every change the operator only noticed on its next tick.
        self.config = config
        self.resync_seconds = resync_seconds
        self.starts = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._killed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, ready: threading.Event, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            resync = {} if self.resync_seconds is None else {"resync_seconds": self.resync_seconds}
            self._main = loop.create_task(operate(self.config, stop_flag=self._stop, ready_flag=ready, **resync))
            started.set()
            loop.run_until_complete(self._main)
        except BaseException as exc:  # any, even a cancellation: reported to the test through .error
            if not self._killed:
                self.error = exc
        finally:
            started.set()
            if self._killed:
                # Never run the loop again: what was pending is dropped mid-flight.
                executor = getattr(loop, "_default_executor", None)
                if executor is not None:
                    executor.shutdown(wait=False)
            else:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _abort(self) -> None:
        """In the operator's loop: drop every connection, as a dead process's would close, and stop."""
        assert self._loop is not None
        transports = getattr(self._loop, "_transports", {})  # the selector loop's open sockets
        for transport in list(transports.values()):
            if transport is not None and not transport.is_closing():
                transport.abort()
        self._loop.stop()

    async def start(self, timeout: float = 30.0) -> None:
        if self.running:
            raise RuntimeError("the operator is already running")
        self._stop = threading.Event()
        ready, started = threading.Event(), threading.Event()
        self.error = None
        self._killed = False
        self._thread = threading.Thread(
            target=self._run, args=(ready, started), daemon=True, name=f"modelfleet operator #{self.starts}"
        )
        self.starts += 1
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not ready.is_set():
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator stopped while starting: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not become ready within {timeout}s")
            await asyncio.sleep(0.05)

    async def _join(self, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        await asyncio.to_thread(thread.join, timeout)
        if thread.is_alive():
            raise TimeoutError(f"the operator did not stop within {timeout}s")

    async def stop(self, timeout: float = 30.0) -> None:
        """Set kopf's stop flag and wait, as SIGTERM would."""
        self._stop.set()
        await self._join(timeout)
        if self.error is not None:
            raise self.error

    async def kill(self, timeout: float = 30.0) -> None:
        """Stop the operator mid-flight, like SIGKILL: its connections drop, nothing of it runs again,
        finalizers and half-done work stay for the next start."""
        if self._loop is not None and self.running:
            self._killed = True
            self._loop.call_soon_threadsafe(self._abort)
        await self._join(timeout)
        # kopf waits on the stop flag from a worker thread; release it, or the interpreter waits
        # for that thread at exit forever (the next start() makes a fresh flag).
        self._stop.set()

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def __aenter__(self) -> InProcessOperator:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
