"""A child process of a test: started in its own session, logged to a file, always stopped.

`ChildProcess` is how the tests run a real program (the runtime server, a pod's
container, the trainer): output goes to a log file whose tail explains a
failure; `stop()` sends SIGTERM and, past a grace period, SIGKILL to the whole
process group, the way the kubelet stops a container; `kill()` is SIGKILL at
once, the way a node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

LOG_TAIL_BYTES = 2048


class ChildProcess:
    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *, pass_fds: Sequence[int] = ()
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.pass_fds = tuple(pass_fds)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=self.pass_fds,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.process is None else self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        assert self.process is not None, "not started"
        return await self.process.wait()

    def send_signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the process and everything it started."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None if it never started)."""
        if self.process is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=grace)
        except TimeoutError:
            self.kill()
            return await self.process.wait()

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - limit))
            return log.read().decode(errors="replace").strip()
