"""POST /feedback and GET /v1/feedback/stats: labelled samples in, the unconsumed count out.

Rows are validated exactly like /predict (same widths, dtypes and messages)
and a 200 is sent only after the samples are fsync'd on the feedback volume.
The stats endpoint reports the whole volume (every pod's segments), so the
same number comes from every replica: read one ready pod, do not sum them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.responses import Response

from .errors import InvalidInput, InvalidValue, NotFound, PayloadTooLarge, Unavailable
from .feedback import FeedbackVolume, FeedbackWriteError, FeedbackWriter, Sample
from .http_io import json_response, read_json_object, read_token, require_bearer
from .inputs import check_entity_widths, payload_rows, rows_to_array
from .model_server import ModelServer

log = logging.getLogger("modelfleet.feedback")

_FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_MAX_LABEL_WIDTH = 4096


class FeedbackService:
    """The pod's writer, the volume's counter and their metrics; HTTP-free."""

    def __init__(self, directory: str, segment_bytes: int, registry: CollectorRegistry) -> None:
        self.samples_total = Counter(
            "modelfleet_feedback_samples_total", "labelled samples durably appended by this pod", registry=registry
        )
        self.unconsumed = Gauge(
            "modelfleet_feedback_unconsumed_samples",
            "samples on the feedback volume (all pods) not yet consumed by training",
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "modelfleet_feedback_fsync_seconds",
            "time of one group commit (write + fsync) of feedback samples",
            buckets=_FSYNC_BUCKETS,
            registry=registry,
        )
        self.enabled = bool(directory)
        self.writer = (
            FeedbackWriter(directory, segment_bytes=segment_bytes, on_sync=self._synced) if directory else None
        )
        self.volume = FeedbackVolume(directory) if directory else None
        self._count_task: asyncio.Task[int] | None = None
        self._count_covers = 0  # appends completed before the running count started
        self._completed = 0

    def _synced(self, seconds: float, samples: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.samples_total.inc(samples)

    async def append(self, samples: list[Sample]) -> int | None:
        """Store `samples` durably; returns the volume's unconsumed count including them.

        Once the samples are stored the request must not fail (a client would resend them),
        so a count that cannot be taken is None.
        """
        assert self.writer is not None
        try:
            await self.writer.append(samples)
        except FeedbackWriteError as exc:
            raise Unavailable(f"feedback could not be stored: {exc}", retry_after=5) from exc
        self._completed += 1
        try:
            return await self.count(after=self._completed)
        except Exception:
            log.exception("stored %d sample(s) but could not count the feedback volume", len(samples))
            return None

    async def count(self, after: int = 0) -> int:
        """The unconsumed count from a scan that started after `after` appends had completed.

        Concurrent callers share one scan (it runs in a thread) instead of each reading the volume.
        """
        if self.volume is None:
            return 0
        while True:
            task = self._count_task
            if task is not None and not task.done() and self._count_covers >= after:
                return await asyncio.shield(task)
            if task is None or task.done():
                self._count_covers = self._completed
                task = self._count_task = asyncio.create_task(asyncio.to_thread(self._count_sync))
                return await asyncio.shield(task)
            # The running scan began before our samples were durable: wait for it, then start another.
            await asyncio.wait([task])

    def _count_sync(self) -> int:
        assert self.volume is not None
        count = self.volume.count_unconsumed()
        self.unconsumed.set(count)
        return count

    async def stats(self) -> dict[str, Any]:
        if self.volume is None or self.writer is None:
            return {"enabled": False, "scope": "volume", "unconsumed": 0}
        stats = await asyncio.to_thread(self.volume.stats)
        self.unconsumed.set(stats.unconsumed)
        return {
            "enabled": True,
            "scope": "volume",
            "unconsumed": stats.unconsumed,
            "segments": stats.segments,
            "open_segments": stats.open_segments,
            "corrupt_records": stats.corrupt_records,
            "pod": self.writer.pod,
            "appended_by_pod": self.writer.appended,
        }

    async def aclose(self) -> None:
        """Finish pending appends and seal this pod's segment (call on shutdown)."""
        if self.writer is not None:
            await self.writer.close()


def _label(value: Any, where: str) -> float | int | list[float]:
    if isinstance(value, bool) or value is None:
        raise InvalidValue(f"{where} must be a number or a list of numbers, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidValue(f"{where} is not a finite number: {value!r}")
        return value
    if isinstance(value, list):
        if not value:
            raise InvalidInput(f"{where} is an empty list")
        if len(value) > _MAX_LABEL_WIDTH:
            raise PayloadTooLarge(f"{where} has {len(value)} values; the limit is {_MAX_LABEL_WIDTH}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                if isinstance(item, list):
                    raise InvalidInput(f"{where}[{i}] is a list; a label is a number or a flat list of numbers")
                raise InvalidValue(f"{where}[{i}] is not a number: {item!r}")
            if not math.isfinite(item):
                raise InvalidValue(f"{where}[{i}] is not a finite number: {item!r}")
        return value
    raise InvalidValue(f"{where} must be a number or a list of numbers, got {type(value).__name__}")


def _labels(payload: dict[str, Any], rows: int) -> list[Any]:
    if rows == 1 and "label" in payload:
        return [_label(payload["label"], "label")]
    if "labels" in payload:
        labels = payload["labels"]
        if not isinstance(labels, list):
            raise InvalidInput("'labels' must be a list with one label per row")
        if len(labels) != rows:
            raise InvalidInput(f"{rows} rows but {len(labels)} labels: send one label per row")
        return [_label(v, f"labels[{i}]") for i, v in enumerate(labels)]
    if "label" in payload:
        raise InvalidInput(f"{rows} rows need 'labels' (a list with one label per row), not 'label'")
    raise InvalidInput("missing 'label': send the true value for these features")


async def _rows(runtime: ModelServer, payload: dict[str, Any]) -> np.ndarray:
    """The feedback rows as the model's input, validated like a prediction."""
    settings = runtime.settings
    if "request_id" in payload:
        request_id = payload["request_id"]
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput("request_id must be a non-empty string")
        kept = runtime.recent_inputs.get(request_id)
        if kept is None:
            raise NotFound(
                f"unknown or expired request_id {request_id!r}: inputs of a prediction are kept for "
                f"{settings.request_retention_seconds:g}s; send 'features' instead"
            )
        return np.asarray(kept)
    model = runtime.model
    if model is None:
        raise Unavailable("the model is still loading; retry shortly", retry_after=1)
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
        if not service.enabled:
            # Permanent for this server, so 404 (a 503 would tell clients to retry).
            raise NotFound(
                "feedback is not enabled on this server: start it with --feedback-dir "
                "(spec.retraining in the ModelVersion)"
            )
        require_bearer(request, token)
        payload = await read_json_object(request, settings.max_body_bytes)
        rows = await _rows(runtime, payload)
        labels = _labels(payload, len(rows))
        now = time.time()
        version = settings.model_version
        samples = [
            Sample([float(v) for v in row], label, now, version)
            for row, label in zip(rows.tolist(), labels, strict=True)
        ]
        unconsumed = await service.append(samples)
        return json_response({"accepted": len(samples), "unconsumed": unconsumed})

    @router.get("/v1/feedback/stats")
    async def feedback_stats() -> Response:
        return json_response(await service.stats())

    return router


__all__ = ["FeedbackService", "build_feedback_router"]
