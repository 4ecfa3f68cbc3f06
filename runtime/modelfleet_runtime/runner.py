"""Run the app under uvicorn with a drain on SIGTERM.

On SIGTERM (or Ctrl-C) readiness turns false at once, uvicorn stops accepting
connections and waits for requests in flight, which includes every request
queued in the batcher; then the batcher stops and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from .app import create_app
from .model_server import ModelServer
from .settings import Settings


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, model_server: ModelServer) -> None:
        super().__init__(config)
        self.model_server = model_server

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.model_server.begin_drain()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown; a completed drain on SIGTERM is a
        # clean exit (code 0), which is what Kubernetes and process supervisors expect.
        if sig == signal.SIGTERM and getattr(self, "_captured_signals", None):
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_server = ModelServer(settings)
    app = create_app(settings, model_server)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # A socket handed over by the parent (--listen-fd) wins over host and port; it stays
        # listening across restarts of this process, so connections wait instead of being refused.
        fd=settings.listen_fd if settings.listen_fd >= 0 else None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_seconds)),
        lifespan="on",
        server_header=False,
    )
    _DrainingServer(config, model_server).run()
    return 0
