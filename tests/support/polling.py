"""Waiting on a condition with a deadline, and the loop every test controller runs.

Tests never sleep to synchronise (DESIGN.md section 8): they poll what a user
would observe until it holds, and fail with a message past a deadline. The
deadline is there to end a hung test, never to judge speed: choose it many
times longer than the condition should take on a loaded machine.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

T = TypeVar("T")
Message = str | Callable[[], str]


class DeadlineExceeded(AssertionError):
    """The condition did not hold before the deadline."""


class Deadline:
    """`timeout` seconds from now; `check()` raises DeadlineExceeded with `message` once past it."""

    def __init__(self, timeout: float, message: Message = "condition") -> None:
        self.timeout = timeout
        self.message = message
        self.end = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.end:
            text = self.message() if callable(self.message) else self.message
            raise DeadlineExceeded(f"not reached within {self.timeout:g}s: {text}")


async def wait_for(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 30.0,
    *,
    interval: float = 0.05,
    message: Message = "condition",
) -> T:
    """Poll `condition` (a plain or an async callable) until it returns something truthy; return that."""
    deadline = Deadline(timeout, message)
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        deadline.check()
        await asyncio.sleep(interval)


def wait_until(
    condition: Callable[[], T], timeout: float = 30.0, *, interval: float = 0.05, message: Message = "condition"
) -> T:
    """`wait_for` for code with no event loop (a blocking client, a server started from a sync fixture)."""
    deadline = Deadline(timeout, message)
    while not (value := condition()):
        deadline.check()
        time.sleep(interval)
    return value


class PollingController:
    """A test controller: `sync()` every `interval` seconds in a task, from `async with` to its end.

    An exception from `sync()` is kept in `errors` and the loop goes on, as a real controller
    keeps reconciling; the fixture that runs the controller fails the test with them.
    Subclasses implement `sync()` and may extend `open()` / `close()`.
    """

    interval = 0.1
    task_name = "test controller"

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        """Before the first sync."""

    async def close(self) -> None:
        """After the last sync."""

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep playing the cluster; the tests see the errors
                self.errors.append(exc)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Self:
        await self.open()
        self._task = asyncio.create_task(self._loop(), name=self.task_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.close()
