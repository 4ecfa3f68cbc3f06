"""This process's part of the feedback volume: its writer identity, its prediction log, and the volume's keeper.

Made when the server starts (in the process that serves: with several workers,
each draws its own writer id), stopped after the batcher drained, so every
answered prediction is written before the process exits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .feedback import Layout
from .prediction_log import PredictionIndex, PredictionLog
from .retention import Retention, VolumeKeeper, VolumeSpace
from .segments import new_writer_id, pod_name
from .settings import Settings


@dataclass
class VolumeServices:
    layout: Layout
    pod: str
    writer: str
    space: VolumeSpace
    index: PredictionIndex
    keeper: VolumeKeeper
    predictions: PredictionLog
    retention: Retention
    clock: Callable[[], float]

    @classmethod
    def open(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> VolumeServices:
        layout = Layout(Path(settings.volume_dir))
        pod, writer = pod_name(), new_writer_id()
        space = VolumeSpace(layout, settings.feedback_quota_bytes)
        retention = Retention(settings.prediction_retention, settings.feedback_retention_seconds)
        predictions = PredictionLog(
            layout.predictions,
            pod=pod,
            writer=writer,
            model=settings.name,
            model_version=settings.model_version,
            sample_rate=settings.prediction_log_sample_rate,
            segment_bytes=settings.prediction_log_segment_bytes,
            flush_interval=settings.prediction_log_flush_ms / 1000.0,
            buffer_bytes=settings.prediction_log_buffer_bytes,
            max_segment_age=retention.max_segment_age,
            clock=clock,
            room=space.room_for_predictions,
            account=space.writing,
            account_append=space.appending,
        )
        index = PredictionIndex(layout.predictions, own_writer=writer, own_issued=lambda: predictions.issued_seq)
        keeper = VolumeKeeper(
            layout,
            space,
            index,
            retention,
            own_writer=writer,
            interval=settings.feedback_maintenance_seconds,
            clock=clock,
        )
        return cls(layout, pod, writer, space, index, keeper, predictions, retention, clock)

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        self.keeper.start()
        self.predictions.start()

    def _prepare(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.space.refresh()

    async def stop(self) -> None:
        await self.keeper.stop()
        await asyncio.to_thread(self.predictions.close)


__all__ = ["VolumeServices"]
