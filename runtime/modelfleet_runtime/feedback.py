"""The label log on the shared feedback volume: durable labels, counted and consumed. Nothing here knows HTTP.

The volume (one folder, shared by every pod and worker of a model and by its
retraining Jobs):

    labels/<pod>_<writer>_<seq>[.open].mflog       label segments (segments.py), one writer each
    labels/consumed/                               sealed label segments whose records are all consumed
    predictions/<pod>_<writer>_<seq>[.open].mflog  the prediction log (prediction_log.py)
    claims/<writer>/<seq>                          one claim per labelled request_id (claims.py)
    consumed.json                                  label segment id -> byte offset consumed up to (+ pending)

A label record (magic `MFL1`) is `head_len u32 | head (JSON) | features`:

    {"ts": T, "request_id": "<writer>-<seq>", "labels": [L, ...]}    a label for a logged prediction (one per row)
    {"ts": T, "label": L, "dtype": "<f4", "width": 4}                a sample sent with its features, which follow
                                                                     as `width` values of `dtype` (the model's)

The first record of a segment (magic `MFH1`) is a JSON object naming the log,
writer, pod, model and model version.

A label by request_id counts only when the id's claim names its record (claims.py);
it is matched when the prediction log holds the prediction (prediction_log.py).
`unconsumed` in the stats is what a training run would use now: samples sent
with features plus matched labels (one sample per row of the prediction).

Consumption: a trainer reads the unconsumed records with their positions,
trains, writes its outputs, then commits the end offsets to consumed.json with
one atomic rename; labels whose prediction may still be written (its writer
runs) are kept as `pending` and read again by the next run. A trainer killed
before the rename consumed nothing; offsets only move forward.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from . import claims
from .durable import atomic_write, fsync_dir
from .prediction_log import Found, PredictionIndex, parse_request_id
from .segments import SegmentAppender, frame, list_segments, read_frame, scan, seal_abandoned

log = logging.getLogger("modelfleet.feedback")

HEADER_MAGIC = b"MFH1"
LABEL_MAGIC = b"MFL1"
MAGICS = (HEADER_MAGIC, LABEL_MAGIC)
MANIFEST = "consumed.json"
CONSUMED_DIR = "consumed"
_HEAD_LEN = struct.Struct("<I")

LabelValue = float | int | list[float]


class FeedbackWriteError(OSError):
    """Labels could not be written or fsync'd; they were not acknowledged."""


class ConsumptionConflict(RuntimeError):
    """Another training run moved the consumed offsets since this one read them."""


@dataclass(frozen=True)
class Layout:
    """Where each part lives on the feedback volume."""

    root: Path

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def consumed(self) -> Path:
        return self.labels / CONSUMED_DIR


@dataclass(frozen=True)
class Label:
    """One label record: for a logged prediction (`request_id`, one label per row) or with its features."""

    ts: float
    labels: tuple[LabelValue, ...]
    request_id: str | None = None
    features: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.labels)


def encode_label(label: Label) -> bytes:
    head: dict[str, Any] = {"ts": label.ts}
    tail = b""
    if label.request_id is not None:
        head |= {"request_id": label.request_id, "labels": list(label.labels)}
    else:
        assert label.features is not None and len(label.labels) == 1
        row = np.ascontiguousarray(label.features.reshape(-1))
        head |= {"label": label.labels[0], "dtype": row.dtype.str, "width": int(row.shape[0])}
        tail = row.tobytes()
    encoded = orjson.dumps(head)
    return _HEAD_LEN.pack(len(encoded)) + encoded + tail


def decode_label(payload: bytes) -> Label | None:
    try:
        (n,) = _HEAD_LEN.unpack_from(payload)
        head = orjson.loads(payload[4 : 4 + n])
        if "request_id" in head:
            return Label(float(head["ts"]), tuple(head["labels"]), str(head["request_id"]))
        dtype, width = np.dtype(head["dtype"]), int(head["width"])
        features = np.frombuffer(payload, dtype=dtype, count=width, offset=4 + n)
        return Label(float(head["ts"]), (head["label"],), None, features)
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def label_header(*, pod: str, writer: str, model: str, model_version: str, created: float) -> bytes:
    body = {"format": 1, "log": "labels", "pod": pod, "writer": writer, "model": model}
    body |= {"model_version": model_version, "created": created}
    return frame(HEADER_MAGIC, json.dumps(body, separators=(",", ":")).encode())


# -- the records the trainer reads ---------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    features: list[float]
    label: LabelValue
    ts: float = 0.0
    model_version: str = ""


@dataclass(frozen=True)
class Record:
    """A training sample and the label record it came from (`end`: the offset just past that record)."""

    segment: str
    offset: int
    end: int
    sample: Sample


@dataclass(frozen=True)
class LabelRecord:
    segment: str
    offset: int
    end: int
    label: Label
    model_version: str


# -- writing -------------------------------------------------------------------------------------


class LabelWriter:
    """This process's label appender: group commit of concurrent appends, then the claims of their ids.

    `append` returns, per label, True when it is stored and (for a request_id) claimed,
    False when another record already holds the id's claim. `on_sync(seconds, labels)` is
    called on the event loop after each successful group; `account(bytes)` is held around
    each write (the volume's usage counts it).
    """

    def __init__(
        self,
        layout: Layout,
        *,
        pod: str,
        writer: str,
        model: str,
        model_version: str,
        segment_bytes: int = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        on_sync: Callable[[float, int], None] | None = None,
        account: Callable[[int], AbstractContextManager[None]] = lambda _: contextlib.nullcontext(),
    ) -> None:
        self.layout = layout
        self.pod, self.writer = pod, writer
        self.on_sync = on_sync
        self._account = account
        self._clock = clock
        header = label_header(pod=pod, writer=writer, model=model, model_version=model_version, created=clock())
        self._appender = SegmentAppender(layout.labels, pod, writer, header, segment_bytes)
        self._pending: list[tuple[list[bytes], list[Label], asyncio.Future[list[bool]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io_lock = threading.Lock()
        self.appended = 0

    @property
    def segment(self) -> str | None:
        """The id of the segment this writer appends to now."""
        return self._appender.name.id if self._appender.name else None

    @property
    def waiting(self) -> int:
        """Appends waiting for the next group commit (the current one, if any, not counted)."""
        return len(self._pending)

    async def append(self, labels: Sequence[Label], *, admit: Callable[[int], None] | None = None) -> list[bool]:
        """Return once every label is written, fsync'd and claimed; raise OSError otherwise.

        `admit(bytes)` is called with the encoded size before anything is written, and may refuse by raising.
        """
        if not labels:
            return []
        payloads = [frame(LABEL_MAGIC, encode_label(label)) for label in labels]
        if admit is not None:
            admit(sum(len(p) for p in payloads))
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((payloads, list(labels), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_groups(), name="modelfleet-feedback-flush")
        # A cancelled request does not cancel the shared write.
        return await asyncio.shield(future)

    async def _flush_groups(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            count = sum(len(labels) for _, labels, _ in group)
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(self._write, group)
            except Exception as exc:  # every waiter of this group learns that its labels are not durable
                log.error("could not store %d label(s) on %s: %s", count, self.layout.root, exc)
                error = exc if isinstance(exc, OSError) else FeedbackWriteError(str(exc))
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.appended += sum(sum(r) for r in results)
            if self.on_sync is not None:
                try:
                    self.on_sync(time.perf_counter() - started, count)
                except Exception:  # an observer must never leave the waiters hanging
                    log.exception("feedback on_sync observer failed")
            for (_, _, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _write(self, group: list[tuple[list[bytes], list[Label], Any]]) -> list[list[bool]]:
        data = b"".join(p for payloads, _, _ in group for p in payloads)
        with self._io_lock:
            try:
                with self._account(len(data)):
                    start = self._appender.append(data, now=self._clock())
            except claims.ClaimsUnsupported:
                raise
            except OSError as exc:
                raise type(exc)(exc.errno, f"feedback volume {self.layout.root}: {exc.strerror or exc}") from exc
            assert self._appender.name is not None
            segment = self._appender.name.id
            results: list[list[bool]] = []
            touched: list[str] = []
            offset = start
            for payloads, labels, _ in group:
                outcome = []
                for payload, label in zip(payloads, labels, strict=True):
                    outcome.append(self._claim(label, segment, offset, touched))
                    offset += len(payload)
                results.append(outcome)
            if touched:
                claims.sync(self.layout.claims, touched)
        return results

    def _claim(self, label: Label, segment: str, offset: int, touched: list[str]) -> bool:
        if label.request_id is None:
            return True
        parsed = parse_request_id(label.request_id)
        assert parsed is not None, "request ids are checked before they are stored"
        writer, seq = parsed
        touched.append(writer)
        return claims.claim(self.layout.claims, writer, seq, claims.target(segment, offset))

    async def close(self) -> None:
        """Finish pending appends and seal the current segment."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._io_lock, contextlib.suppress(OSError):
            self._appender.seal()


# -- reading, counting and consuming -------------------------------------------------------------


@dataclass
class _Entry:
    """What counting needs of one label record."""

    offset: int
    rows: int
    by_id: bool = False  # False: a sample sent with features
    writer: str = ""
    seq: int = 0
    claim: bool | None = None  # None: not known yet (its claim may be in flight)


@dataclass
class _Cached:
    sealed: bool
    resume: int = 0
    offsets: list[int] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    corrupt: int = 0
    model_version: str = ""


@dataclass(frozen=True)
class LogStats:
    unconsumed: int  # samples a training run would use now: with_features + matched
    with_features: int
    matched: int
    pending: int
    unmatched: int
    expired: int
    duplicates: int
    segments: int
    open_segments: int
    corrupt_records: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Manifest:
    offsets: dict[str, int]
    pending: dict[str, list[int]]
    raw: dict[str, Any]


class FeedbackVolume:
    """Every pod's label segments: counting, reading and committing consumption.

    Counting is incremental: segments only grow, so each call reads only the bytes
    appended since the previous one. `index` (the volume's prediction logs) decides
    which labels are matched; without one, every label by request_id counts as pending.
    """

    def __init__(self, root: str | Path, *, index: PredictionIndex | None = None) -> None:
        self.layout = Layout(Path(root))
        self.directory = self.layout.root
        self.index = index
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    # the manifest

    def read_manifest(self) -> Manifest:
        try:
            raw = json.loads(self.layout.manifest.read_bytes())
        except FileNotFoundError:
            return Manifest({}, {}, {"segments": {}})
        if not isinstance(raw, dict) or not isinstance(raw.get("segments"), dict):
            raise ValueError(f"{self.layout.manifest} is not a consumption manifest")
        pending = {k: [int(o) for o in v] for k, v in (raw.get("pending") or {}).items()}
        return Manifest({k: int(v) for k, v in raw["segments"].items()}, pending, raw)

    def consumed_offsets(self) -> dict[str, int]:
        return self.read_manifest().offsets

    # counting

    def _refresh(self, sid: str, path: Path, sealed: bool) -> _Cached:
        cached = self._cache.get(sid)
        if cached is None:
            cached = self._cache[sid] = _Cached(sealed=sealed)
        cached.sealed = cached.sealed or sealed
        try:
            if path.stat().st_size <= cached.resume:
                return cached
            result = scan(path, cached.resume, MAGICS, sealed=cached.sealed)
        except FileNotFoundError:
            return cached  # sealed or archived meanwhile: the next listing finds it
        for fr in result.frames:
            if fr.magic == HEADER_MAGIC:
                with contextlib.suppress(ValueError):
                    cached.model_version = str(json.loads(fr.payload).get("model_version", ""))
                continue
            label = decode_label(fr.payload)
            if label is None:
                cached.corrupt += 1
                continue
            entry = _Entry(fr.offset, label.rows, by_id=label.request_id is not None)
            if label.request_id is not None and (parsed := parse_request_id(label.request_id)):
                entry.writer, entry.seq = parsed
            cached.offsets.append(fr.offset)
            cached.entries.append(entry)
        cached.corrupt += result.corrupt
        cached.resume = result.resume
        return cached

    def _status(self, sid: str, entry: _Entry, sealed: bool) -> str:
        if not entry.by_id:
            return "with_features"
        if entry.claim is None:
            owner = claims.holder(self.layout.claims, entry.writer, entry.seq)
            if owner is not None:
                entry.claim = owner == claims.target(sid, entry.offset)
        if entry.claim is False:
            return "duplicates"
        found = self.index.lookup(entry.writer, entry.seq).status if self.index is not None else Found.PENDING
        if entry.claim is None and found is not Found.EXPIRED:
            # Its claim is being made, or (in a sealed segment, whose writer made every claim it
            # could before it moved on) never was: a label that was not acknowledged.
            return "unacknowledged" if sealed else "pending"
        return {
            Found.FOUND: "matched",
            Found.EXPIRED: "expired",
            Found.PENDING: "pending",
            Found.UNKNOWN: "unmatched",
        }[found]

    def stats(self) -> LogStats:
        with self._lock:
            if self.index is not None:
                self.index.refresh()
            segments = list_segments(self.layout.labels)
            manifest = self.read_manifest()
            kinds = ("with_features", "matched", "pending", "unmatched", "expired", "duplicates", "unacknowledged")
            counts = dict.fromkeys(kinds, 0)
            corrupt = opened = 0
            for sid, (name, path) in segments.items():
                cached = self._refresh(sid, path, name.sealed)
                consumed = manifest.offsets.get(sid, 0)
                carried = set(manifest.pending.get(sid, ()))
                for entry in cached.entries[bisect.bisect_left(cached.offsets, consumed) :]:
                    counts[self._status(sid, entry, cached.sealed)] += entry.rows
                for entry in cached.entries[: bisect.bisect_left(cached.offsets, consumed)]:
                    if entry.offset in carried:
                        counts[self._status(sid, entry, cached.sealed)] += entry.rows
                corrupt += cached.corrupt
                opened += not cached.sealed
            for gone in set(self._cache) - set(segments):
                del self._cache[gone]
            del counts["unacknowledged"]
            return LogStats(
                unconsumed=counts["with_features"] + counts["matched"],
                segments=len(segments),
                open_segments=opened,
                corrupt_records=corrupt,
                **counts,
            )

    def count_unconsumed(self) -> int:
        return self.stats().unconsumed

    # reading for training

    def iter_unconsumed(self, manifest: Manifest | None = None) -> Iterator[LabelRecord]:
        """Every readable label after the consumed offset of its segment, and the pending ones before it.

        Pass the manifest you read (and will give to `commit` as `expected`) to read from exactly it.
        """
        manifest = self.read_manifest() if manifest is None else manifest
        for sid, (name, path) in sorted(list_segments(self.layout.labels).items()):
            start = manifest.offsets.get(sid, 0)
            try:
                yield from self._pending_records(sid, path, manifest.pending.get(sid, []), start)
                result = scan(path, start, MAGICS, sealed=name.sealed)
            except FileNotFoundError:
                # Sealed between listing and opening.
                path = self.layout.labels / f"{sid}.mflog"
                if not path.exists():
                    continue
                result = scan(path, start, MAGICS, sealed=True)
            version = self._model_version(sid, path)
            for fr in result.frames:
                label = decode_label(fr.payload) if fr.magic == LABEL_MAGIC else None
                if label is not None:
                    yield LabelRecord(sid, fr.offset, fr.end, label, version)

    def _model_version(self, sid: str, path: Path) -> str:
        cached = self._cache.get(sid)
        if cached is not None and cached.model_version:
            return cached.model_version
        header = read_frame(path, 0, (HEADER_MAGIC,))
        if header is None:
            return ""
        with contextlib.suppress(ValueError):
            return str(json.loads(header.payload).get("model_version", ""))
        return ""

    def _pending_records(self, sid: str, path: Path, offsets: list[int], start: int) -> Iterator[LabelRecord]:
        version = self._model_version(sid, path)
        for offset in sorted(o for o in offsets if o < start):
            fr = read_frame(path, offset, (LABEL_MAGIC,))
            label = decode_label(fr.payload) if fr is not None else None
            if fr is not None and label is not None:
                yield LabelRecord(sid, offset, fr.end, label, version)

    def claimed_by(self, record: LabelRecord) -> bool | None:
        """Whether the claim of the record's request_id names it (None: no claim exists)."""
        assert record.label.request_id is not None
        parsed = parse_request_id(record.label.request_id)
        if parsed is None:
            return False
        owner = claims.holder(self.layout.claims, *parsed)
        return None if owner is None else owner == claims.target(record.segment, record.offset)

    @staticmethod
    def positions(records: Sequence[LabelRecord | Record]) -> dict[str, int]:
        """The end offset of the last record read in each segment: what a commit consumes."""
        ends: dict[str, int] = {}
        for r in records:
            ends[r.segment] = max(ends.get(r.segment, 0), r.end)
        return ends

    def commit(
        self,
        positions: Mapping[str, int],
        *,
        pending: Mapping[str, Sequence[int]] | None = None,
        expected: Manifest | None = None,
        run: Mapping[str, Any] | None = None,
    ) -> None:
        """Mark everything before `positions` consumed, except the `pending` record offsets, atomically.

        `expected` is the manifest the caller read from; a different one now means a
        concurrent run consumed labels, and nothing is committed.
        """
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / ".consume.lock", "a+") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            manifest = self.read_manifest()
            if expected is not None:
                _check_unchanged(manifest, expected, set(positions) | set(expected.offsets))
            offsets = dict(manifest.offsets)
            for sid, end in positions.items():
                offsets[sid] = max(offsets.get(sid, 0), int(end))
            carried = {k: list(v) for k, v in manifest.pending.items() if k not in positions}
            for sid, found in (pending or {}).items():
                if found:
                    carried[sid] = sorted(set(found))
            present = set(list_segments(self.layout.labels))
            # Entries of segments moved to consumed/ are dropped only once the file is gone.
            offsets = {k: v for k, v in offsets.items() if k in present or k in positions}
            carried = {k: v for k, v in carried.items() if k in offsets}
            updated: dict[str, Any] = {"segments": dict(sorted(offsets.items())), "updated": time.time()}
            if carried:
                updated["pending"] = dict(sorted(carried.items()))
            if run is not None or "last_run" in manifest.raw:
                updated["last_run"] = dict(run) if run is not None else manifest.raw["last_run"]
            atomic_write(self.layout.manifest, json.dumps(updated, indent=1).encode())
            with self._lock:
                self._archive(offsets, carried)

    def _archive(self, offsets: Mapping[str, int], pending: Mapping[str, list[int]]) -> None:
        """Move sealed segments with nothing left to read into labels/consumed/, dated for retention."""
        moved = False
        now = time.time()
        for sid, (name, path) in list_segments(self.layout.labels).items():
            if not name.sealed or sid not in offsets or pending.get(sid):
                continue
            cached = self._refresh(sid, path, True)
            if bisect.bisect_left(cached.offsets, offsets[sid]) < len(cached.offsets):
                continue
            target = self.layout.consumed
            target.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, target / path.name)
                os.utime(target / path.name, (now, now))
                moved = True
        if moved:
            fsync_dir(self.layout.labels)

    def seal_abandoned(self) -> list[str]:
        sealed = []
        for directory in (self.layout.labels, self.layout.predictions):
            if directory.is_dir():
                sealed += seal_abandoned(directory)
        return sealed


def _check_unchanged(manifest: Manifest, expected: Manifest, segments: set[str]) -> None:
    for sid in segments:
        now, then = manifest.offsets.get(sid, 0), expected.offsets.get(sid, 0)
        if now != then or sorted(manifest.pending.get(sid, [])) != sorted(expected.pending.get(sid, [])):
            raise ConsumptionConflict(
                f"segment {sid} was consumed up to {now} by another training run "
                f"(this run read from {then}); nothing was committed"
            )


__all__ = [
    "ConsumptionConflict",
    "FeedbackVolume",
    "FeedbackWriteError",
    "Label",
    "LabelRecord",
    "LabelWriter",
    "Layout",
    "LogStats",
    "Manifest",
    "Record",
    "Sample",
    "decode_label",
    "encode_label",
]
