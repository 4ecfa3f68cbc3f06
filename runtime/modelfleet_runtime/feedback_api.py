"""POST /feedback and GET /v1/feedback/stats: labels in, the volume's counts out.

A label names a logged prediction (`request_id`, answered by any pod or worker
sharing the volume) or comes with its features (rows validated exactly like
/predict). Labels are checked against the model's output (labels.py), and a
200 is sent only after they are fsync'd on the feedback volume and, for a
request_id, claimed (a second label for the same id is a 409, whichever pod it
reaches). The stats describe the whole volume (every pod's segments), so every
replica reports the same numbers: read one ready pod, do not sum them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.responses import Response

from . import claims
from .errors import Conflict, InsufficientStorage, InvalidInput, NotFound, Unavailable
from .feedback import FeedbackVolume, Label, LabelWriter
from .http_io import json_response, read_json_object, read_token, require_bearer
from .inputs import check_entity_widths, payload_rows, rows_to_array
from .labels import LabelRule
from .model_server import ModelServer
from .prediction_log import Found, parse_request_id
from .volume import VolumeServices

log = logging.getLogger("modelfleet.feedback")

_FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT)


class FeedbackService:
    """The process's label writer, the volume's counter and their metrics; HTTP-free.

    It uses the server's VolumeServices (made when the server starts), so it is usable
    once the server started with --feedback-dir.
    """

    def __init__(self, server: ModelServer, registry: CollectorRegistry) -> None:
        self.server = server
        self.enabled = bool(server.settings.feedback_dir)
        self.samples_total = Counter(
            "modelfleet_feedback_samples_total", "labelled samples durably appended by this process", registry=registry
        )
        self.refused_total = Counter(
            "modelfleet_feedback_refused_total",
            "labels refused: a request_id labelled before (duplicate), unknown or expired, or a full volume",
            ["reason"],
            registry=registry,
        )
        self.unconsumed = Gauge(
            "modelfleet_feedback_unconsumed_samples",
            "samples on the feedback volume (all pods) a training run would use now",
            registry=registry,
            multiprocess_mode="livemostrecent",  # every worker of a pod counts the same volume
        )
        self.fsync_seconds = Histogram(
            "modelfleet_feedback_fsync_seconds",
            "time of one group commit (write + fsync + claims) of labels",
            buckets=_FSYNC_BUCKETS,
            registry=registry,
        )
        self._writer: LabelWriter | None = None
        self._volume: FeedbackVolume | None = None
        self._rule: LabelRule | None = None
        self._count_task: asyncio.Task[int] | None = None
        self._count_covers = 0  # appends completed before the running count started
        self._completed = 0

    # what the server made at start

    def require_enabled(self) -> None:
        """A 404 that says how to turn feedback on, when it is off (permanent for this server: a 503
        would tell clients to retry); a 503 while the feedback volume is not usable."""
        _ = self.services

    @property
    def services(self) -> VolumeServices:
        if not self.enabled:
            raise NotFound(
                "feedback is not enabled on this server: start it with --feedback-dir "
                "(spec.retraining in the ModelVersion)"
            )
        if self.server.volume is None:
            raise Unavailable(f"the feedback volume is not usable: {self.server.reason}", retry_after=5)
        return self.server.volume

    @property
    def volume(self) -> FeedbackVolume:
        if self._volume is None:
            services = self.services
            self._volume = FeedbackVolume(services.layout.root, index=services.index)
        return self._volume

    def writer(self) -> LabelWriter:
        if self._writer is None:
            services, settings = self.services, self.server.settings
            self._writer = LabelWriter(
                services.layout,
                pod=services.pod,
                writer=services.writer,
                model=settings.name,
                model_version=settings.model_version,
                segment_bytes=settings.feedback_segment_bytes,
                clock=self.server.clock,
                on_sync=self._synced,
                account=services.space.writing,
            )
        return self._writer

    def rule(self) -> LabelRule:
        model = self.server.require_model()
        if self._rule is None:
            self._rule = LabelRule.of(model, self.server.model_path)
        return self._rule

    def _synced(self, seconds: float, labels: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.samples_total.inc(labels)

    # requests

    async def check_request_id(self, request_id: str) -> tuple[str, int]:
        """(writer, seq) of a request_id the volume's prediction logs hold (or will: its writer runs)."""
        services = self.services
        parsed = parse_request_id(request_id)
        found = Found.UNKNOWN
        if parsed is not None:
            cutoff = services.clock() - services.retention.predictions
            await asyncio.to_thread(services.index.refresh)
            found = services.index.lookup(*parsed, cutoff=cutoff).status
        if found is Found.EXPIRED:
            self.refused_total.labels("expired").inc()
            raise NotFound(
                f"request_id {request_id!r} expired: predictions are kept for "
                f"{services.retention.predictions:g}s (--prediction-retention-seconds); send 'features' instead"
            )
        if parsed is None or found is Found.UNKNOWN:
            self.refused_total.labels("unknown").inc()
            raise NotFound(
                f"unknown request_id {request_id!r}: no prediction log on this feedback volume holds it "
                "(a request_id is what /predict answered); send 'features' instead"
            )
        if claims.claimed(services.layout.claims, *parsed):
            self.refused_total.labels("duplicate").inc()
            raise Conflict(f"request_id {request_id!r} already has a label: a prediction is labelled once")
        return parsed

    async def append(self, labels: list[Label]) -> int | None:
        """Store `labels` durably; returns the volume's unconsumed count including them.

        Once the labels are stored the request must not fail (a client would resend them),
        so a count that cannot be taken is None.
        """
        space = self.services.space

        def admit(size: int) -> None:
            refusal = space.refuse_labels(size)
            if refusal is not None:
                self.refused_total.labels("full").inc()
                raise InsufficientStorage(refusal)

        try:
            stored = await self.writer().append(labels, admit=admit)
        except claims.ClaimsUnsupported as exc:
            raise Unavailable(f"feedback by request_id cannot be stored: {exc}", retry_after=None) from exc
        except OSError as exc:
            if exc.errno in _STORAGE_FULL:
                self.refused_total.labels("full").inc()
                raise InsufficientStorage(f"the feedback volume is full: {exc}; nothing was stored") from exc
            raise Unavailable(f"feedback could not be stored: {exc}", retry_after=5) from exc
        if not all(stored):
            self.refused_total.labels("duplicate").inc()
            request_id = next(label.request_id for label, ok in zip(labels, stored, strict=True) if not ok)
            raise Conflict(f"request_id {request_id!r} already has a label: a prediction is labelled once")
        self._completed += 1
        try:
            return await self.count(after=self._completed)
        except Exception:
            log.exception("stored %d label(s) but could not count the feedback volume", len(labels))
            return None

    async def count(self, after: int = 0) -> int:
        """The unconsumed count from a scan that started after `after` appends had completed.

        Concurrent callers share one scan (it runs in a thread) instead of each reading the volume.
        """
        while True:
            task = self._count_task
            if task is not None and not task.done() and self._count_covers >= after:
                return await asyncio.shield(task)
            if task is None or task.done():
                self._count_covers = self._completed
                task = self._count_task = asyncio.create_task(asyncio.to_thread(self._count_sync))
                return await asyncio.shield(task)
            # The running scan began before our labels were durable: wait for it, then start another.
            await asyncio.wait([task])

    def _count_sync(self) -> int:
        count = self.volume.count_unconsumed()
        self.unconsumed.set(count)
        return count

    async def stats(self) -> dict[str, Any]:
        if not self.enabled or self.server.volume is None:
            return {"enabled": False, "scope": "volume", "unconsumed": 0}
        stats = await asyncio.to_thread(self.volume.stats)
        self.unconsumed.set(stats.unconsumed)
        services = self.services
        return {
            "enabled": True,
            "scope": "volume",
            **stats.as_dict(),
            "pod": services.pod,
            "writer": services.writer,
            "appended_by_pod": self._writer.appended if self._writer else 0,
            "quota_bytes": services.space.quota,
            "used_bytes": services.space.used,
        }

    async def aclose(self) -> None:
        """Finish pending appends and seal this process's label segment (call on shutdown)."""
        if self._writer is not None:
            await self._writer.close()


def _label_values(payload: dict[str, Any], rows: int | None, rule: LabelRule) -> list[Any]:
    """The labels of the request, one per row, each checked against the model's output.

    `rows` is None for a request_id: its prediction's row count is checked by the trainer.
    """
    if (rows is None or rows == 1) and "label" in payload:
        return [rule.check(payload["label"], "label")]
    if "labels" in payload:
        labels = payload["labels"]
        if not isinstance(labels, list) or not labels:
            raise InvalidInput("'labels' must be a list with one label per row")
        if rows is not None and len(labels) != rows:
            raise InvalidInput(f"{rows} rows but {len(labels)} labels: send one label per row")
        return [rule.check(v, f"labels[{i}]") for i, v in enumerate(labels)]
    if "label" in payload:
        raise InvalidInput(f"{rows} rows need 'labels' (a list with one label per row), not 'label'")
    raise InvalidInput("missing 'label': send the true value for these features")


async def _rows(runtime: ModelServer, payload: dict[str, Any]) -> np.ndarray:
    """The feedback rows as the model's input, validated like a prediction."""
    settings = runtime.settings
    model = runtime.require_model()
    width = model.input_width
    if width is None:
        raise InvalidInput("this model's input is not a feature matrix; feedback takes rows of features")
    prefix = None
    if "entity_id" in payload:
        entity_id = payload["entity_id"]
        if runtime.features is None:
            raise InvalidInput("entity_id was given but this server has no feature store configured")
        if not isinstance(entity_id, str) or not entity_id:
            raise InvalidInput("entity_id must be a non-empty string")
        prefix = np.asarray(await runtime.features.get(entity_id)).reshape(-1)
    _, rows = payload_rows(
        payload,
        max_rows=settings.max_queue,
        entity=prefix is not None,
        missing="expected 'features' (one row), 'instances' (a list of rows), 'entity_id' or 'request_id'",
    )
    own_width = width
    if prefix is not None:
        check_entity_widths(rows, prefix, width)
        own_width = width - prefix.shape[-1]
    # A model with an input width has exactly one (2-D) input.
    return rows_to_array(rows, own_width, model.inputs[0].dtype, prefix=prefix)


async def _labels(runtime: ModelServer, service: FeedbackService, payload: dict[str, Any]) -> list[Label]:
    now = runtime.clock()
    if "request_id" in payload:
        request_id = payload["request_id"]
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput("request_id must be a non-empty string")
        rule = service.rule()
        await service.check_request_id(request_id)
        return [Label(now, tuple(_label_values(payload, None, rule)), request_id)]
    rows = await _rows(runtime, payload)
    values = _label_values(payload, len(rows), service.rule())
    return [Label(now, (value,), None, row) for row, value in zip(rows, values, strict=True)]


def build_feedback_router(runtime: ModelServer, service: FeedbackService) -> APIRouter:
    """The feedback endpoints for `runtime` over `service`.

    The caller owns `service`: await its `aclose()` on shutdown.
    """
    settings = runtime.settings
    token = read_token(settings.feedback_token_file)
    if service.enabled and token is None:
        log.warning(
            "POST /feedback accepts samples from anyone: no --feedback-token-file is set, and feedback "
            "changes what the next model learns"
        )
    router = APIRouter()

    @router.post("/feedback")
    async def feedback(request: Request) -> Response:
        service.require_enabled()
        require_bearer(request, token)
        payload = await read_json_object(request, settings.max_body_bytes)
        labels = await _labels(runtime, service, payload)
        unconsumed = await service.append(labels)
        return json_response({"accepted": sum(label.rows for label in labels), "unconsumed": unconsumed})

    @router.get("/v1/feedback/stats")
    async def feedback_stats() -> Response:
        return json_response(await service.stats())

    return router


__all__ = ["FeedbackService", "build_feedback_router"]
