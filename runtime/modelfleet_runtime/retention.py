"""What the feedback volume may hold: the byte quota shared by labels and predictions, and retention.

Quota. `--feedback-quota-bytes` bounds the bytes of labels/, predictions/ and
claims/ together (a claim counts as CLAIM_BYTES). Every process re-reads the
volume's usage every maintenance interval and adds what it appended itself
since; so with N writers the usage may pass the quota by what the others
appended within one interval. Predictions stop being logged at
PREDICTION_SHARE of the quota (they are answered without a request_id), so the
last part stays for labels, which are refused with 507 Insufficient Storage
once a label would pass the quota, or leave less than `reserve_bytes` free on
the filesystem. Nothing acknowledged is ever deleted to make room.

Retention. A sealed prediction segment is deleted once its newest prediction is
older than `--prediction-retention-seconds` (so every prediction is kept at least
that long; a writer seals its segment once it is older than an eighth of the
retention, at most an hour), and with it the claims of the ids it held; a
tombstone `predictions/<writer>.expired` remembers how far a writer's
predictions expired, so a late label is reported expired, not unknown.
Consumed label segments (labels/consumed/) are deleted
`--feedback-retention-seconds` after they were consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import claims
from .feedback import Layout
from .prediction_log import EXPIRED_SUFFIX, PredictionIndex, write_tombstone
from .segments import entries, seal_abandoned

log = logging.getLogger("modelfleet.retention")

CLAIM_BYTES = 100
PREDICTION_SHARE = 0.9


def _folder_bytes(directory: Path) -> int:
    total = 0
    for entry in entries(directory):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class VolumeSpace:
    """The volume's usage against the quota; `add` is called by this process's writers as they append."""

    def __init__(self, layout: Layout, quota_bytes: int, *, reserve_bytes: int = 64 * 1024 * 1024) -> None:
        self.layout = layout
        self.quota = quota_bytes
        self.reserve = reserve_bytes
        self.scanned = 0
        self.free: int | None = None
        self._added = 0
        self._base = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def writing(self, size: int) -> Iterator[None]:
        """Around a write of `size` bytes by this process that may create or rename a segment: never
        during a scan (a file renamed under a scan may be missed by it), counted once it is done.

        So this process's own appends are counted exactly; other processes' as of the last scan.
        """
        with self._lock:
            try:
                yield
            finally:
                self._added += size

    @contextlib.contextmanager
    def appending(self, size: int) -> Iterator[None]:
        """Around an append of `size` bytes to an open segment that creates and renames nothing.

        It never waits for a scan (the prediction log appends on the inference thread): an append
        that overlaps a scan may be counted twice until the next one, so `used` errs high, never low.
        """
        try:
            yield
        finally:
            with self._lock:
                self._added += size

    @property
    def used(self) -> int:
        """The last scan plus what this process appended since it began."""
        return self.scanned + self._added - self._base

    def refresh(self) -> None:
        layout = self.layout
        with self._lock:  # no `writing` meanwhile; `appending` goes on
            before = self._added  # what was appended before the scan began is in what it finds
            scanned = (
                _folder_bytes(layout.labels)
                + _folder_bytes(layout.consumed)
                + _folder_bytes(layout.predictions)
                + CLAIM_BYTES * claims.count(layout.claims)
            )
            self.scanned, self._base = scanned, before
        try:
            stat = os.statvfs(layout.root)
            self.free = stat.f_bavail * stat.f_frsize
        except OSError:
            self.free = None

    def room_for_predictions(self) -> bool:
        if self.free is not None and self.free < self.reserve:
            return False
        return self.used < self.quota * PREDICTION_SHARE

    def refuse_labels(self, incoming: int) -> str | None:
        """Why `incoming` bytes of labels cannot be stored now, or None when they can."""
        if self.used + incoming > self.quota:
            return (
                f"the feedback volume is full: {self.used} of the {self.quota} bytes of its quota "
                "(--feedback-quota-bytes) are used; labels are accepted again once a training run "
                "consumed them or retention deleted old predictions"
            )
        if self.free is not None and self.free - incoming < self.reserve:
            return f"the feedback volume's filesystem has {self.free} bytes free; labels need {self.reserve} to spare"
        return None


@dataclass(frozen=True)
class Retention:
    predictions: float
    consumed_labels: float

    @property
    def max_segment_age(self) -> float:
        """How old a prediction segment may grow before its writer seals it (so it can be deleted)."""
        return max(1.0, min(self.predictions / 8, 3600.0))


def sweep(layout: Layout, index: PredictionIndex, retention: Retention, now: float) -> int:
    """Delete what retention allows; returns the number of files deleted."""
    deleted = 0
    index.refresh()
    for writer, summaries in index.writers().items():
        expired_up_to = None
        for summary in summaries:
            if summary.name.sealed and summary.first_seq is None:
                deleted += _delete_if_empty(layout.predictions / summary.name.file_name, summary.resume)
                continue
            if not summary.name.sealed or summary.ts_max >= now - retention.predictions:
                break  # a writer's segments expire oldest first
            expired_up_to = summary.last_seq
            write_tombstone(layout.predictions, writer, expired_up_to or 0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layout.predictions / summary.name.file_name)
                deleted += 1
        if expired_up_to is not None:
            # A label for these ids is refused as expired from now on: their claims are no longer needed.
            deleted += claims.sweep(layout.claims, writer, expired_up_to + 1)
    deleted += _sweep_by_age(layout.consumed, "", now - retention.consumed_labels)
    deleted += _sweep_by_age(layout.predictions, EXPIRED_SUFFIX, now - retention.predictions)
    if deleted:
        index.refresh()
    return deleted


def _delete_if_empty(path: Path, read_up_to: int) -> int:
    """Delete a sealed segment that holds no prediction: every byte of it was read and was its header."""
    with contextlib.suppress(FileNotFoundError):
        if read_up_to > 0 and path.stat().st_size == read_up_to:
            path.unlink()
            return 1
    return 0


def _sweep_by_age(directory: Path, suffix: str, before: float) -> int:
    deleted = 0
    for entry in entries(directory):
        if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime < before:
                os.unlink(entry.path)
                deleted += 1
    return deleted


class VolumeKeeper:
    """Every `interval` seconds, off the event loop: seal dead writers' segments, re-read usage, sweep."""

    def __init__(
        self,
        layout: Layout,
        space: VolumeSpace,
        index: PredictionIndex,
        retention: Retention,
        *,
        own_writer: str,
        interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.space = space
        self.index = index
        self.retention = retention
        self.own_writer = own_writer
        self.interval = interval
        self.clock = clock
        self.sweeps = 0
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        for directory in (self.layout.labels, self.layout.predictions):
            if directory.is_dir():
                seal_abandoned(directory, skip_writer=self.own_writer)
        self.space.refresh()
        if sweep(self.layout, self.index, self.retention, self.clock()):
            self.space.refresh()
        self.sweeps += 1

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # the next tick tries again; the volume may be back
                log.exception("maintenance of the feedback volume %s failed", self.layout.root)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="modelfleet-volume-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


__all__ = ["CLAIM_BYTES", "PREDICTION_SHARE", "Retention", "VolumeKeeper", "VolumeSpace", "sweep"]
