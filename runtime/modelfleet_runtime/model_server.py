"""The model server's core: load, warm up, batch, drain; one instance per process.

Both protocol modules (simple_api.py, v2_api.py) call `ModelServer.infer`; neither knows
about loading or batching. State moves loading -> ready (or failed) -> draining.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from .batching import Batcher
from .demo import write_demo_model
from .errors import ModelLoadError, NotFound, Unavailable
from .metrics import RuntimeMetrics
from .model import OnnxModel
from .pod import PodView, SingleProcess
from .settings import Settings
from .sources import default_cache_dir, fetch_model

if TYPE_CHECKING:  # imported when a feature store (it brings in redis) or a feedback volume is configured
    from .features import FeatureStore
    from .prediction_log import PredictionLog
    from .volume import VolumeServices

log = logging.getLogger("modelfleet.server")


class State(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class ModelServer:
    """`clock` (wall-clock seconds) dates logged predictions and labels and drives retention; tests move it."""

    def __init__(
        self, settings: Settings, metrics: RuntimeMetrics | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or RuntimeMetrics(model=settings.name, version=settings.model_version)
        self.state = State.LOADING
        self.reason = "loading the model"
        # Called with the new state and reason on every change (a worker publishes them to its pod).
        self.on_state: Callable[[State, str], None] | None = None
        # What the pod-wide endpoints (readiness, /stats, /metrics) describe: this process, or
        # every worker of the pod (runner.py replaces it in a worker).
        self.pod: PodView = SingleProcess(self)
        self.model: OnnxModel | None = None
        self.batcher: Batcher | None = None
        # This process's part of the feedback volume and its prediction log, set by start() when
        # --feedback-dir or --prediction-log-dir is: predictions that return a request_id are logged there.
        self.volume: VolumeServices | None = None
        self.prediction_log: PredictionLog | None = None
        self.features: FeatureStore | None = None  # set when settings.feature_store is
        self.model_path: Path | None = None
        self._load_task: asyncio.Task[None] | None = None
        # The median one-row run at warmup (0 when not timed): decides whether lone requests run inline.
        self.single_request_seconds = 0.0
        # How many requests the HTTP server holds (uvicorn's request tasks), set by whoever runs it;
        # None: unknown, and then no request counts as lone.
        self.http_requests: Callable[[], int] | None = None
        self._drain_listeners: list[Callable[[], None]] = []
        self._ready_listeners: list[Callable[[], None]] = []

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in the background; the HTTP server answers liveness meanwhile."""
        if self.settings.feature_store and self.features is None:
            from .features import FeatureStore

            self.features = FeatureStore.from_settings(self.settings, registry=self.metrics.registry)
        if self.settings.volume_dir and self.volume is None:
            from .volume import VolumeServices

            volume = VolumeServices.open(self.settings, clock=self.clock)
            try:
                await volume.start()
            except OSError as exc:  # a volume the server cannot write: it never serves, and says why
                self._fail(f"the feedback volume {self.settings.volume_dir} cannot be used: {exc}")
                return
            self.volume = volume
            volume.predictions.register_metrics(self.metrics.registry, self.metrics.model, self.metrics.version)
            self.prediction_log = volume.predictions
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="modelfleet-load")

    async def wait_loaded(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    def _source_path(self) -> Path:
        s = self.settings
        if s.demo and not s.model:
            folder = Path(s.cache_dir) if s.cache_dir else default_cache_dir()
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError:
                folder = Path(tempfile.gettempdir())
            return write_demo_model(folder / "demo-model.onnx")
        return fetch_model(
            s.model, sha256=s.sha256, model_root=s.model_root, cache_dir=s.cache_dir, policy=s.source_policy()
        )

    def _load_sync(self) -> OnnxModel:
        s = self.settings
        started = time.perf_counter()
        self.model_path = self._source_path()
        model = OnnxModel(self.model_path, intra_op_threads=s.intra_op_threads, inter_op_threads=s.inter_op_threads)
        loaded = time.perf_counter()
        self.metrics.load_seconds.set(loaded - started)
        log.info(
            "loaded %s (inputs %s, outputs %s) in %.3fs",
            self.model_path,
            [i.metadata() for i in model.inputs],
            [o.metadata() for o in model.outputs],
            loaded - started,
        )
        if self.features is not None and (model.input_width is None or self.features.width > model.input_width):
            raise ModelLoadError(
                f"the feature store supplies {self.features.width} features per entity, but the "
                f"model takes {model.input_width if model.input_width is not None else 'no'} "
                "features per row"
            )
        model.warmup(s.warmup_iterations, s.max_batch_size)
        if s.inline_run_max_ms > 0:
            self.single_request_seconds = model.single_request_seconds()
        self.metrics.warmup_seconds.set(time.perf_counter() - loaded)
        return model

    async def _load(self) -> None:
        try:
            model = await asyncio.to_thread(self._load_sync)
        except ModelLoadError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # anything else is still a model that will never serve
            log.exception("unexpected error while loading the model")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if self.state is State.DRAINING:
            return
        self.model = model
        max_batch = min(self.settings.max_batch_size, model.max_rows_per_run or self.settings.max_batch_size)
        self.batcher = Batcher(
            model.run,
            max_batch_size=max_batch,
            max_latency_ms=self.settings.max_latency_ms,
            max_queue=self.settings.max_queue,
            on_batch=self._observe_batch,
            # The prediction log is written before the answers go back (a crash loses no answered one).
            record=self.prediction_log.record_many if self.prediction_log is not None else None,
        )
        self.batcher.start()
        run_ms = self.single_request_seconds * 1000.0
        self.batcher.run_inline = 0 < run_ms <= self.settings.inline_run_max_ms
        log.info(
            "a one-row run takes %.3f ms: a lone request runs %s (inline-run-max-ms %g)",
            run_ms,
            "on the event loop" if self.batcher.run_inline else "on the inference thread",
            self.settings.inline_run_max_ms,
        )
        for listener in self._ready_listeners:
            listener()
        self.metrics.ready.set(1)
        self._set_state(State.READY, "model loaded and warmed up")
        log.info("ready: serving %s version %s", self.settings.name, self.settings.model_version)

    def _set_state(self, state: State, reason: str) -> None:
        self.state, self.reason = state, reason
        if self.on_state is not None:
            self.on_state(state, reason)

    def _fail(self, reason: str) -> None:
        self.metrics.ready.set(0)
        self._set_state(State.FAILED, reason)
        log.error("the model will not serve: %s", reason)

    def _observe_batch(self, record: Any, waits: list[float]) -> None:
        self.metrics.observe_batch(record, waits)
        self.metrics.set_queue_depth(self.batcher.queued_rows if self.batcher else 0)

    def on_ready(self, listener: Callable[[], None]) -> None:
        """Call `listener` on the event loop once the model is loaded and warmed up, before readiness turns true."""
        self._ready_listeners.append(listener)

    def on_drain(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the drain begins (from a signal handler: it must only schedule work)."""
        self._drain_listeners.append(listener)

    def begin_drain(self) -> None:
        """Readiness turns false at once; requests already accepted still finish."""
        if self.state is State.DRAINING:
            return
        log.info("draining: readiness is now false")
        self.metrics.ready.set(0)
        self._set_state(State.DRAINING, "shutting down")
        for listener in self._drain_listeners:
            listener()

    async def stop(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.close(self.settings.drain_timeout_seconds)
        if self.volume is not None:  # after the batcher: every answered prediction is queued by now
            await self.volume.stop()
        if self.features is not None:
            await self.features.close()

    # -- requests ------------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """The pod's readiness answer: `ready` is true only when every worker of the pod is."""
        return self.pod.readiness()

    def check_target(self, name: str, version: str | None = None) -> None:
        s = self.settings
        if name != s.name or (version is not None and version != s.model_version):
            asked = f"model {name!r}" + (f" version {version!r}" if version is not None else "")
            raise NotFound(
                f"{asked} is not served here; this server serves model {s.name!r} version {s.model_version!r}"
            )

    def require_model(self) -> OnnxModel:
        # While draining, requests that still reach this pod are served: endpoints take a
        # moment to drop it, and refusing them would turn a clean rollout into errors.
        if self.model is not None and self.state in (State.READY, State.DRAINING):
            return self.model
        if self.state is State.FAILED:
            raise Unavailable(f"the model failed to load: {self.reason}", retry_after=None)
        if self.state is State.DRAINING:
            raise Unavailable("the server is shutting down; retry on another replica")
        raise Unavailable("the model is still loading; retry shortly", retry_after=1)

    async def infer(
        self, feeds: dict[str, np.ndarray], rows: int, *, http: bool = False, logged: bool = True
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """Every output for `feeds`, and the prediction's request_id when the prediction log holds it.

        `http`: an HTTP request, which may run inline when it is the only one in the server.
        `logged`: False for a protocol whose answer has no place for a request_id (KServe V1).
        """
        self.require_model()
        assert self.batcher is not None
        lone = http and self.http_requests is not None and self.http_requests() == 1
        return await self.batcher.submit_tagged(feeds, rows, lone=lone, logged=logged)
