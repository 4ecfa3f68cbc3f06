"""The real ModelFleet operator (kopf), in this process, stoppable and killable.

It runs in its own thread with its own event loop, as kopf's documentation
recommends for embedding: when kopf stops it cancels every task created in its
loop after it started, which in the test's loop would include the test itself,
the emulator's streams and the test kubelet. The operator reaches the emulated
API server over TCP like any client, so the separation costs nothing.

A kill must look like a dead process to the API server: every connection drops
and nothing of the operator runs again. The loop is built on a selector and a
default executor this class owns (both public asyncio API), so the kill finds
the loop's TCP sockets in the selector and shuts them down, and drops the
executor without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.runner import operate
from tests.support.polling import wait_for

# The loops of killed operators and their tasks, kept for the rest of the session: a killed process
# runs nothing more, and neither may these. Collected, their coroutines would run cleanup code at
# whatever moment the garbage collector picks, inside another test (and warn about it).
_KILLED: list[tuple[asyncio.AbstractEventLoop, set[asyncio.Task[Any]]]] = []


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
        self._selector: selectors.BaseSelector | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._killed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, ready: threading.Event, started: threading.Event) -> None:
        self._selector = selectors.DefaultSelector()
        loop = asyncio.SelectorEventLoop(self._selector)
        self._executor = ThreadPoolExecutor(thread_name_prefix="modelfleet-operator-executor")
        loop.set_default_executor(self._executor)
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
                # Never run the loop again: what was pending is dropped mid-flight, and never finalised.
                self._executor.shutdown(wait=False, cancel_futures=True)
                _KILLED.append((loop, asyncio.all_tasks(loop)))
            else:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def _abort(self) -> None:
        """In the operator's loop: drop every connection, as a dead process's would close, and stop."""
        assert self._loop is not None and self._selector is not None
        # Every open connection is registered for reading.
        for key in list(self._selector.get_map().values()):
            _shut_down_tcp(key.fd)
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
        thread = self._thread

        def started_or_stopped() -> bool:
            if not thread.is_alive():
                raise RuntimeError(f"the operator stopped while starting: {self.error!r}")
            return ready.is_set()

        await wait_for(started_or_stopped, timeout, message="the operator to become ready")

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


def _shut_down_tcp(fd: int) -> None:
    """End the TCP connection behind `fd` (a FIN to the peer); other descriptors are left alone.

    It works on a duplicate: the connection ends for every descriptor of it, while the
    loop's own descriptor stays open for the socket object that owns it to close.
    """
    duplicate = os.dup(fd)
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:  # not a socket (the loop's wake-up pipe may be one end of a pipe)
        os.close(duplicate)
        return
    with sock, contextlib.suppress(OSError):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            sock.shutdown(socket.SHUT_RDWR)
