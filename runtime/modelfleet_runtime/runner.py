"""Run the app under uvicorn, in one process or in N worker processes, with a drain on SIGTERM.

`--workers 1` (the default) is one process serving the port itself, as it
always was: nothing sits between a request and the model. With more workers a
supervisor (supervisor.py) binds the port and runs N copies of this process,
each with its own session and batcher; each worker runs `serve_worker`.

On SIGTERM (or Ctrl-C) readiness turns false at once, uvicorn stops accepting
connections and waits for requests in flight, which includes every request
queued in the batcher; then the batcher stops and the process exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
from types import FrameType

import uvicorn

from .app import create_app
from .connections import ConnectionLimits, OverCapacity, RuntimeConfig
from .cpus import container_cpus
from .metrics import RuntimeMetrics
from .model_server import ModelServer
from .pod import PodFolder, WorkerView
from .settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, model_server: ModelServer, *, clean_exits: tuple[int, ...]) -> None:
        super().__init__(config)
        self.model_server = model_server
        self.clean_exits = clean_exits

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.model_server.begin_drain()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown; a completed drain on SIGTERM is a
        # clean exit (code 0), which is what Kubernetes and process supervisors expect.
        if sig in self.clean_exits and getattr(self, "_captured_signals", None):
            self._captured_signals = [s for s in self._captured_signals if s not in self.clean_exits]


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_header_bytes=settings.max_header_bytes,
        keep_alive_timeout=settings.keep_alive_timeout_seconds,
        limit_concurrency=settings.limit_concurrency,
    )


def _run(
    settings: Settings,
    model_server: ModelServer,
    *,
    sockets: list[socket.socket] | None = None,
    clean_exits: tuple[int, ...] = (signal.SIGTERM,),
) -> int:
    app = create_app(settings, model_server)
    limits = connection_limits(settings)
    config = RuntimeConfig(
        app,
        limits=limits,
        over_capacity=OverCapacity(app.router.routes, model_server.metrics, limits.limit_concurrency),
        on_timeout=model_server.metrics.observe_timeout,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_seconds)),
        lifespan="on",
        server_header=False,
    )
    _DrainingServer(config, model_server, clean_exits=clean_exits).run(sockets=sockets)
    return 0


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    workers = settings.workers or container_cpus()
    # A socket handed over by the parent (--listen-fd) wins over host and port; it stays
    # listening across restarts of this process, so connections wait instead of being refused.
    inherited = socket.socket(fileno=settings.listen_fd) if settings.listen_fd >= 0 else None
    if workers > 1:
        from .supervisor import supervise

        return supervise(settings, workers, inherited)
    return _run(settings, ModelServer(settings), sockets=[inherited] if inherited is not None else None)


def serve_worker(settings: Settings, listener: socket.socket, folder: PodFolder, worker: int, workers: int) -> int:
    """One worker of a pod: serve on `listener` and describe the whole pod in readiness, /stats and /metrics."""
    logging.basicConfig(
        level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s worker {worker} %(name)s: %(message)s"
    )
    # `workers` resolved (0 is one per CPU): what the app needs to know it shares its ports.
    settings = dataclasses.replace(settings, workers=workers)
    metrics = RuntimeMetrics(
        model=settings.name, version=settings.model_version, window_path=folder.window_file(worker)
    )
    model_server = ModelServer(settings, metrics)
    model_server.pod = WorkerView(model_server, folder, worker, workers)
    # The supervisor decides what a signal means for the pod; a worker that drained exits 0 either way.
    return _run(settings, model_server, sockets=[listener], clean_exits=(signal.SIGTERM, signal.SIGINT))
