"""The supervisor of a pod's worker processes: bind the port, start N workers, restart the dead, drain all.

It is never on a request's path. Each worker (worker.py) accepts connections
on a listening socket of its own: the supervisor binds N sockets to the same
address with SO_REUSEPORT, and the kernel spreads new connections over them by
a hash of the client's address and port. A single socket shared by every
worker would leave the choice to whichever process wakes first: measured on
this machine with wrk's 64 keep-alive connections and two workers, a shared
socket split them 54/10, 18/46 and 0/64, SO_REUSEPORT 34/30, 30/34 and 34/30.
Keep-alive connections stay with the worker that accepted them, so that first
split decides the load for their whole life.

Worker 0 starts first, the others once it has fetched the model: one download
per pod, and they load it from the cache. The supervisor keeps its copy of
every worker's socket: when a worker dies, the connections waiting in its
backlog stay there for the worker started in its place at once. A worker
that dies again soon is restarted after a growing delay (1 s, 2 s, ... 30 s);
during that delay its socket is closed, so new connections go to the other
workers instead of waiting.

An inherited socket (`--listen-fd`, socket activation) that has SO_REUSEPORT set
gets N-1 siblings the same way; one without it is shared by all workers.

The pod is ready only when every worker is (pod.py). SIGTERM or SIGINT: the
pod turns not ready, every worker gets SIGTERM and drains (requests in flight
are answered), and the supervisor exits 0 once all of them exited 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cpus import container_cpus
from .pod import LOADING, STARTING, PodFolder
from .settings import Settings, env_name, settings_environ

log = logging.getLogger("modelfleet.supervisor")

BACKLOG = 2048
# A worker that ran this long before it died is restarted at once.
HEALTHY_RUN_SECONDS = 60.0
MAX_RESTART_DELAY = 30.0
# Beyond the drain timeout, how long workers get to stop their batcher and exit.
EXIT_GRACE_SECONDS = 15.0
# How often the supervisor reads worker 0's status while the pod starts.
STATUS_POLL_SECONDS = 0.05


def restart_delay(quick_deaths: int) -> float:
    """Seconds before restarting a worker after `quick_deaths` consecutive early deaths (the first: none)."""
    if quick_deaths <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY, 2.0 ** (quick_deaths - 2))


def worker_threads(configured: int, cpus: int, workers: int) -> int:
    """onnxruntime intra-op threads per worker: as configured, else the CPUs shared out (at least 1)."""
    if configured:
        return configured
    return max(1, cpus // workers)


def _reuses_port(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


class Listeners:
    """One listening socket per worker: SO_REUSEPORT siblings on one address, or one shared socket."""

    def __init__(self, address: tuple[str, int], family: int, *, shared: socket.socket | None = None) -> None:
        self.address = address
        self.family = family
        self.shared = shared
        self._sockets: dict[int, socket.socket] = {}

    @classmethod
    def bind(cls, host: str, port: int) -> Listeners:
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listeners = cls((str(address[0]), int(address[1])), family)
        first = listeners.get(0)  # binding the first one now reports a taken port before any worker starts
        listeners.address = (str(first.getsockname()[0]), int(first.getsockname()[1]))
        return listeners

    @classmethod
    def inherited(cls, sock: socket.socket) -> Listeners:
        name = sock.getsockname()
        address = (str(name[0]), int(name[1]))
        if _reuses_port(sock):
            listeners = cls(address, sock.family)
            listeners._sockets[0] = sock
            return listeners
        log.warning("the inherited socket does not set SO_REUSEPORT: all workers share it (uneven balance)")
        return cls(address, sock.family, shared=sock)

    def get(self, worker: int) -> socket.socket:
        if self.shared is not None:
            return self.shared
        sock = self._sockets.get(worker)
        if sock is None:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(self.address)
                sock.listen(BACKLOG)
            except OSError:
                sock.close()
                raise
            sock.set_inheritable(True)
            self._sockets[worker] = sock
        return sock

    def release(self, worker: int) -> None:
        """Close worker `worker`'s socket, so that new connections go to the other workers."""
        sock = self._sockets.pop(worker, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for worker in list(self._sockets):
            self.release(worker)
        if self.shared is not None:
            self.shared.close()


@dataclass
class Slot:
    worker: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    exit: str | None = None


class Supervisor:
    def __init__(self, settings: Settings, workers: int, listeners: Listeners, folder: PodFolder) -> None:
        self.settings = settings
        self.listeners = listeners
        self.folder = folder
        self.slots = [Slot(k) for k in range(workers)]
        self.stopping = False
        cpus = container_cpus()
        threads = worker_threads(settings.intra_op_threads, cpus, workers)
        if workers * threads > cpus:
            log.warning(
                "%d workers x %d intra-op threads exceed the %d CPUs this container may use", workers, threads, cpus
            )
        self.env = {
            **os.environ,
            **settings_environ(settings),
            env_name("intra_op_threads"): str(threads),
        }
        log.info("%d workers on %s:%d, %d onnxruntime thread(s) each", workers, *listeners.address, threads)

    def _publish(self) -> None:
        self.folder.write_supervisor(
            {
                "pid": os.getpid(),
                "workers": len(self.slots),
                "stopping": self.stopping,
                "slots": [
                    {"pid": s.process.pid if s.process else None, "restarts": s.restarts, "exit": s.exit}
                    for s in self.slots
                ],
            }
        )

    async def _start(self, slot: Slot) -> asyncio.subprocess.Process:
        sock = self.listeners.get(slot.worker)
        argv = [
            sys.executable,
            "-m",
            "modelfleet_runtime.worker",
            "--worker",
            str(slot.worker),
            "--workers",
            str(len(self.slots)),
            "--pod-dir",
            str(self.folder.root),
            "--socket-fd",
            str(sock.fileno()),
            "--parent",
            str(os.getpid()),
        ]
        process = await asyncio.create_subprocess_exec(*argv, env=self.env, pass_fds=(sock.fileno(),))
        slot.process, slot.started, slot.exit = process, time.monotonic(), None
        self._publish()
        log.info("worker %d started (pid %d)", slot.worker, process.pid)
        if self.stopping:  # the stop came while it was being started
            process.send_signal(signal.SIGTERM)
        return process

    async def _keep(self, slot: Slot, stop: asyncio.Event) -> int | None:
        """Run slot's worker until the pod stops; returns the exit code of its last worker."""
        while True:
            process = await self._start(slot)
            code = await process.wait()
            lived = time.monotonic() - slot.started
            slot.process = None
            self.folder.forget_metrics(slot.worker)
            if self.stopping:
                self._publish()
                return code
            slot.quick_deaths = 0 if lived >= HEALTHY_RUN_SECONDS else slot.quick_deaths + 1
            delay = restart_delay(slot.quick_deaths)
            slot.restarts += 1
            slot.exit = f"the worker exited with code {code}; restarting" + (f" in {delay:g}s" if delay else "")
            self._publish()
            log.error(
                "worker %d (pid %d) exited with code %s; restarting in %gs", slot.worker, process.pid, code, delay
            )
            if delay:
                self.listeners.release(slot.worker)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return None

    async def _first_worker_fetched(self, first: asyncio.Task[int | None], stop: asyncio.Event) -> None:
        """Wait until worker 0 got past loading the model (or failed, or exited).

        The others start then and find the model in the download cache: one download per pod,
        not one per worker, and never N partial copies in the cache folder at once.
        """
        while not stop.is_set() and not first.done():
            statuses = self.folder.statuses(self.folder.supervisor())
            if statuses and statuses[0].state not in (STARTING, LOADING):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_POLL_SECONDS)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._publish()
        keepers = [asyncio.create_task(self._keep(self.slots[0], stop))]
        await self._first_worker_fetched(keepers[0], stop)
        keepers += [asyncio.create_task(self._keep(slot, stop)) for slot in self.slots[1:]]
        await stop.wait()
        self.stopping = True
        self._publish()
        log.info("draining %d workers", len(self.slots))
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)
        # The workers hold their own copies: once they stop accepting, the port is closed.
        self.listeners.close()
        try:
            codes = await asyncio.wait_for(
                asyncio.gather(*keepers), self.settings.drain_timeout_seconds + EXIT_GRACE_SECONDS
            )
        except TimeoutError:
            log.error("workers still running after the drain timeout: killing them")
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    slot.process.kill()
            codes = await asyncio.gather(*keepers)
        failed = [(slot.worker, code) for slot, code in zip(self.slots, codes, strict=True) if code not in (0, None)]
        if failed:
            log.error("workers that did not drain cleanly (worker, exit code): %s", failed)
            return 1
        log.info("all workers drained")
        return 0


def supervise(settings: Settings, workers: int, inherited: socket.socket | None = None) -> int:
    """Run `workers` worker processes on the settings' address (or on `inherited`) until SIGTERM."""
    listeners = (
        Listeners.inherited(inherited) if inherited is not None else Listeners.bind(settings.host, settings.port)
    )
    folder = PodFolder(Path(tempfile.mkdtemp(prefix="modelfleet-pod-")))
    folder.create()
    try:
        return asyncio.run(Supervisor(settings, workers, listeners, folder).run())
    finally:
        listeners.close()
        shutil.rmtree(folder.root, ignore_errors=True)


__all__ = ["Listeners", "Supervisor", "restart_delay", "supervise", "worker_threads"]
