"""The prediction log: the inputs and outputs of predictions, kept on the feedback volume for joins and analysis.

Every prediction that returns a `request_id` is appended to this process's own
segments in `predictions/` (see segments.py for names and framing). The batcher
calls `PredictionLog.record_many` with the predictions a model run completed,
on the thread that ran it and before their answers go back to the event loop:
one block, one `write` into the open segment. A background thread makes what was
written durable with one `fdatasync` per `flush_interval` (group commit); the
predict path never waits for it.

What a crash may lose (docs/online-learning.md says the same): a prediction is
in the kernel (the segment's page cache) before its answer is sent, so a process
crash (kill -9, OOM) loses only predictions whose answers were not sent; a power
loss or kernel crash may lose those answered since the last fdatasync, at most
`flush_interval` plus one sync earlier. A lost prediction's id is then unknown
to the log: a label naming it is refused (404). Bytes written but not yet synced
are bounded (`buffer_bytes`); past the bound (a stalled disk), when the volume's
quota leaves no room for predictions, or when the write fails, a prediction is
answered without a request_id and counted as dropped, so an id that was returned
is one the log holds, or lost only by a power loss within the flush interval.

A request id is `<writer>-<seq>` (16 hex digits, then hex): the writer names the
process whose log holds it, and a writer's seqs grow by one per logged
prediction, in the order of its log, so whether the log holds an id is decided
from a few numbers per segment (`PredictionIndex`).

A block is one record (magic `MFP1`) holding consecutive predictions:

    first_seq u64 | requests u32 | inputs u16 | outputs u16 | ts_min f64 | ts_max f64
    ts f64[requests] | rows u32[requests]
    per tensor (inputs, then outputs): name_len u8 | name | dtype_len u8 | dtype (numpy, e.g. "<f4")
                                       | ndim u8 | shape u32[ndim] | data (row-major, all requests' rows)

The first record of every segment (magic `MFH1`) is a JSON object naming the log,
writer, pod, model and model version. All numbers are little-endian.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import math
import os
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from .durable import atomic_write
from .segments import (
    FRAME,
    SegmentAppender,
    SegmentName,
    entries,
    frame,
    iter_headers,
    list_segments,
    read_frame,
)

log = logging.getLogger("modelfleet.predictions")

HEADER_MAGIC = b"MFH1"
BLOCK_MAGIC = b"MFP1"
MAGICS = (HEADER_MAGIC, BLOCK_MAGIC)
BLOCK_HEAD = struct.Struct("<QIHHdd")
_SHAPE_DIM = struct.Struct("<I")
# Strings and other object tensors are logged as their JSON text under this dtype name.
JSON_DTYPE = "json"
# predictions/<writer>.expired: the highest seq of a writer whose segments retention deleted.
EXPIRED_SUFFIX = ".expired"
REQUEST_ID = re.compile(r"([0-9a-f]{16})-([0-9a-f]{1,16})")

Arrays = Mapping[str, np.ndarray]
# (seq, ts, feeds, outputs, bytes): a tuple, because the predict path builds one per request.
Entry = tuple[int, float, Arrays, Arrays, int]


def request_id(writer: str, seq: int) -> str:
    return f"{writer}-{seq:x}"


def parse_request_id(text: str) -> tuple[str, int] | None:
    match = REQUEST_ID.fullmatch(text)
    return (match[1], int(match[2], 16)) if match else None


# -- blocks --------------------------------------------------------------------------------------


def _layout(entry: Entry) -> tuple[Any, ...]:
    """What must agree for predictions to share a block: names, dtypes and row shapes of every tensor."""
    return tuple((name, a.dtype.str, a.shape[1:]) for part in (entry[2], entry[3]) for name, a in part.items())


def _tensor_bytes(name: str, joined: np.ndarray) -> list[bytes | memoryview]:
    data: bytes | memoryview
    if joined.dtype.kind in "biuf":
        dtype, shape = joined.dtype.str, joined.shape
        data = np.ascontiguousarray(joined).data.cast("B")
    else:
        text = orjson.dumps(joined.tolist())
        dtype, shape, data = JSON_DTYPE, (len(text),), text
    encoded_name, encoded_dtype = name.encode(), dtype.encode()
    head = (
        bytes([len(encoded_name)])
        + encoded_name
        + bytes([len(encoded_dtype)])
        + encoded_dtype
        + bytes([len(shape)])
        + b"".join(_SHAPE_DIM.pack(d) for d in shape)
    )
    return [head, data]


def _joined(entries: list[Entry], outputs: bool, name: str) -> tuple[np.ndarray, list[int]]:
    """The input (or output) `name` of every entry, concatenated, and each entry's rows of it."""
    arrays = [e[3][name] for e in entries] if outputs else [e[2][name] for e in entries]
    rows = [a.shape[0] for a in arrays]
    joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    if joined.dtype != arrays[0].dtype or joined.dtype != arrays[-1].dtype:
        raise ValueError(f"tensor {name!r} changes dtype within a group")
    return joined, rows


def encode_block(entries: list[Entry]) -> bytes:
    """One block of consecutive predictions; ValueError when their tensors do not agree in row shape.

    Within one model they always agree but for outputs with a free dimension (see `_groups`).
    """
    inputs, outputs = entries[0][2], entries[0][3]
    tensors = [(name, *_joined(entries, False, name)) for name in inputs] + [
        (name, *_joined(entries, True, name)) for name in outputs
    ]
    rows = tensors[0][2]
    if any(t[2] != rows for t in tensors[1:]):
        raise ValueError("the tensors of a prediction differ in rows")
    ts = np.array([e[1] for e in entries], dtype="<f8")
    parts: list[bytes | memoryview] = [
        BLOCK_HEAD.pack(entries[0][0], len(entries), len(inputs), len(outputs), float(ts.min()), float(ts.max())),
        ts.tobytes(),
        np.array(rows, dtype="<u4").tobytes(),
    ]
    for name, joined, _ in tensors:
        parts += _tensor_bytes(name, joined)
    return b"".join(parts)


@dataclass
class Block:
    """Consecutive predictions of one writer: request `first_seq + i` has `rows[i]` rows of every tensor."""

    first_seq: int
    ts: np.ndarray
    rows: np.ndarray
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.rows) - 1

    def __contains__(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.last_seq

    def request(self, seq: int) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(ts, inputs, outputs) of request `seq`."""
        i = seq - self.first_seq
        lo, hi = int(self.starts[i]), int(self.starts[i + 1])
        return (
            float(self.ts[i]),
            {k: v[lo:hi] for k, v in self.inputs.items()},
            {k: v[lo:hi] for k, v in self.outputs.items()},
        )


def _read_tensor(payload: bytes, at: int) -> tuple[str, np.ndarray, int]:
    n = payload[at]
    name = payload[at + 1 : at + 1 + n].decode()
    at += 1 + n
    n = payload[at]
    dtype = payload[at + 1 : at + 1 + n].decode()
    at += 1 + n
    ndim = payload[at]
    shape = struct.unpack_from(f"<{ndim}I", payload, at + 1)
    at += 1 + 4 * ndim
    if dtype == JSON_DTYPE:  # shape is (bytes of JSON text,)
        return name, np.asarray(orjson.loads(payload[at : at + shape[0]]), dtype=object), at + shape[0]
    np_dtype = np.dtype(dtype)
    count = math.prod(shape)
    array = np.frombuffer(payload, dtype=np_dtype, count=count, offset=at).reshape(shape)
    return name, array, at + count * np_dtype.itemsize


def decode_block(payload: bytes) -> Block:
    first_seq, count, n_in, n_out, _, _ = BLOCK_HEAD.unpack_from(payload)
    at = BLOCK_HEAD.size
    ts = np.frombuffer(payload, dtype="<f8", count=count, offset=at)
    at += 8 * count
    rows = np.frombuffer(payload, dtype="<u4", count=count, offset=at)
    at += 4 * count
    tensors: list[dict[str, np.ndarray]] = [{}, {}]
    for i in range(n_in + n_out):
        name, array, at = _read_tensor(payload, at)
        tensors[0 if i < n_in else 1][name] = array
    return Block(first_seq, ts, rows, tensors[0], tensors[1])


def segment_header(*, pod: str, writer: str, model: str, model_version: str, created: float) -> bytes:
    body = {"format": 1, "log": "predictions", "pod": pod, "writer": writer, "model": model}
    body |= {"model_version": model_version, "created": created}
    return frame(HEADER_MAGIC, json.dumps(body, separators=(",", ":")).encode())


# -- writing -------------------------------------------------------------------------------------


class PredictionLog:
    """This process's prediction log: `record_many` writes on the predict path, a thread syncs in the background.

    `room()` says whether the volume has room for predictions (the quota); it is read by
    the sync thread, never by the predict path, which reads the `accepting` flag.
    `account(bytes)` is held around each write that creates or renames a segment and around
    every seal, `account_append(bytes)` (default: `account`) around the other writes: the
    volume's usage counts them, and a scan of the volume may hold `account` off, never
    `account_append` (see retention.VolumeSpace).
    """

    def __init__(
        self,
        directory: Path,
        *,
        pod: str,
        writer: str,
        model: str,
        model_version: str,
        sample_rate: float = 1.0,
        segment_bytes: int = 64 * 1024 * 1024,
        flush_interval: float = 0.02,
        buffer_bytes: int = 64 * 1024 * 1024,
        max_segment_age: float = 3600.0,
        idle_check: float = 1.0,
        clock: Callable[[], float] = time.time,
        room: Callable[[], bool] = lambda: True,
        account: Callable[[int], AbstractContextManager[None]] = lambda _: contextlib.nullcontext(),
        account_append: Callable[[int], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.directory = directory
        self.writer = writer
        self.prefix = writer + "-"
        self.sample_rate = sample_rate
        self.flush_interval = flush_interval
        self.buffer_bytes = buffer_bytes
        self.max_segment_age = max_segment_age
        self.idle_check = idle_check
        self._clock = clock
        self._room = room
        self._account = account
        self._account_append = account_append or account
        self._random = random.Random().random
        header = segment_header(pod=pod, writer=writer, model=model, model_version=model_version, created=clock())
        self._appender = SegmentAppender(directory, pod, writer, header, segment_bytes, deferred_sync=True)
        # Held around every use of the appender: writes (predict path), syncs and seals (the sync thread).
        self._lock = threading.Lock()
        self._seq = 0
        self._written_bytes = 0  # written to the segment (in the kernel) ...
        self._synced_bytes = 0  # ... and of those, covered by a completed fdatasync
        self.accepting = False
        self._sleeping = False
        self._closing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics: _LogMetrics | None = None
        # Plain integers, read by the metrics collector.
        self.dropped_buffer = 0
        self.dropped_full = 0  # the volume's quota leaves no room for predictions
        self.dropped_error = 0
        self.records = 0
        self.bytes = 0
        self.groups = 0
        self.errors = 0

    def register_metrics(self, registry: CollectorRegistry, model: str = "model", version: str = "1") -> None:
        """The log's metrics in `registry`, labelled with the served model, kept current by the log's thread."""
        self._metrics = _LogMetrics(self, registry, (model, version))
        self._metrics.push()

    def _push_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.push()

    @property
    def queued_bytes(self) -> int:
        """Bytes written but not yet synced: what a power loss (not a process crash) may take."""
        return self._written_bytes - self._synced_bytes

    @property
    def issued_seq(self) -> int:
        """The seq of the last id handed out (every seq up to it is logged, or was lost to a write error)."""
        return self._seq

    # the predict path

    def record(self, feeds: Arrays, outputs: Arrays) -> str | None:
        """Log one prediction (see record_many); its request_id, or None when it is not logged."""
        return self.record_many([(feeds, outputs)])[0]

    def record_many(self, predictions: Sequence[tuple[Arrays, Arrays]]) -> list[str | None]:
        """Log `predictions` (one batch's) with one write(2); each one's request_id, None when not logged.

        When this returns, every id it gives is in the kernel (the segment's page cache: a crash of
        the process cannot lose it); the sync thread makes it durable within `flush_interval`.
        A prediction is not logged when sampled out, when the log is closed or the quota full,
        when more than `buffer_bytes` wait for their sync (a stalled disk), or when the write fails.
        """
        ids: list[str | None] = [None] * len(predictions)
        if not self.accepting:
            if not self._closing:
                self.dropped_full += len(predictions)
            return ids
        if self._written_bytes - self._synced_bytes > self.buffer_bytes:
            self.dropped_buffer += len(predictions)
            return ids
        chosen = list(range(len(predictions)))
        if self.sample_rate < 1.0:
            chosen = [i for i in chosen if self._random() < self.sample_rate]
            if not chosen:
                return ids
        with self._lock:
            if self._closing:  # checked under the lock: nothing is written after the last seal
                return ids
            now = self._clock()
            entries: list[Entry] = []
            for i in chosen:
                feeds, outputs = predictions[i]
                self._seq += 1
                entries.append((self._seq, now, feeds, outputs, 0))
            if not self._write(entries, now):
                return ids
        for i, (seq, *_) in zip(chosen, entries, strict=True):
            ids[i] = f"{self.prefix}{seq:x}"
        if self._sleeping:
            self._sleeping = False
            self._wake.set()
        return ids

    def _write(self, entries: list[Entry], now: float) -> bool:
        """Encode and write `entries` (holding the lock); False, counted and logged, when that fails."""
        try:
            data = _encode(entries)
            aged = self._appender.name is not None and now - self._appender.opened_at > self.max_segment_age
            account = self._account if aged or self._appender.renames_for(len(data)) else self._account_append
            with account(len(data)):
                if aged:
                    self._appender.seal()
                self._appender.append(data, now=now, sync=False)
        except (OSError, ValueError, TypeError) as exc:
            self.errors += 1
            self.dropped_error += len(entries)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.accepting = False
            log.error("could not log %d prediction(s) to %s: %s", len(entries), self.directory, exc)
            return False
        self.records += len(entries)
        self.bytes += len(data)
        self.groups += 1
        self._written_bytes += len(data)
        return True

    # the sync thread

    def start(self) -> None:
        self.accepting = self._room()
        self._thread = threading.Thread(target=self._run, name="modelfleet-prediction-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            if self._written_bytes > self._synced_bytes:
                self._sync()
                if not self._closing:
                    # Group commit: at most one fdatasync per flush interval.
                    self._stop.wait(self.flush_interval)
                continue
            if self._closing:
                break
            self._sleeping = True
            if self._written_bytes == self._synced_bytes:
                self._wake.wait(self.idle_check)
            self._sleeping = False
            self._wake.clear()
            self._housekeeping()
            self._push_metrics()  # what was counted without a write (predictions answered without an id)
        with self._lock, self._account(0):  # close() set _closing first: no write follows this seal
            try:
                self._appender.seal()
            except OSError as exc:
                log.error("could not seal the prediction log segment in %s: %s", self.directory, exc)
        self._sync()  # what the last seal retired

    def _sync(self) -> None:
        """fdatasync what was written so far, without holding the lock (writes go on meanwhile)."""
        with self._lock:
            written = self._written_bytes
            fds = self._appender.take_for_sync()
        for fd in fds:
            try:
                (getattr(os, "fdatasync", None) or os.fsync)(fd)
            except OSError as exc:
                self.errors += 1
                log.error("could not sync the prediction log in %s: %s", self.directory, exc)
            finally:
                os.close(fd)
        self._synced_bytes = written
        self.accepting = self._room() and not self._closing
        self._push_metrics()

    def _housekeeping(self) -> None:
        """Seal a segment older than max_segment_age (so retention can delete it) and re-read the quota."""
        if self._closing:
            return
        self.accepting = self._room()
        with self._lock:
            name = self._appender.name
            if name is not None and self._clock() - self._appender.opened_at > self.max_segment_age:
                try:
                    with self._account(0):  # a rename: never under a scan of the volume
                        self._appender.seal()
                except OSError as exc:
                    log.error("could not seal the prediction log segment %s: %s", name.id, exc)

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, sync what was written, seal the segment (blocking: call it off the event loop)."""
        self.accepting = False
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the prediction log did not finish writing within %gs", timeout)


class _LogMetrics:
    """The log's counters as metrics, pushed from the log's own thread (the predict path only adds to
    plain integers and takes no lock). Pushed, not read at scrape time: a pod's workers report through
    prometheus-client's multiprocess files, which only metrics that were set or increased reach."""

    def __init__(self, log: PredictionLog, registry: CollectorRegistry, labels: tuple[str, str]) -> None:
        self.log = log
        names = ["model", "version"]
        self.records = Counter(
            "modelfleet_prediction_log_records", "predictions written to the prediction log", names, registry=registry
        ).labels(*labels)
        self.bytes = Counter(
            "modelfleet_prediction_log_bytes", "bytes written to the prediction log", names, registry=registry
        ).labels(*labels)
        dropped = Counter(
            "modelfleet_prediction_log_dropped",
            "predictions answered without a request_id: the write buffer or the volume's quota was full, "
            "or the write failed",
            [*names, "reason"],
            registry=registry,
        )
        self.dropped = {reason: dropped.labels(*labels, reason) for reason in ("buffer", "quota", "error")}
        self.queued = Gauge(
            "modelfleet_prediction_log_queued_bytes",
            "bytes of predictions written to the log but not yet synced to disk",
            names,
            registry=registry,
            multiprocess_mode="livesum",  # each worker has its own log
        ).labels(*labels)
        self._pushed: dict[str, int] = {}
        self._lock = threading.Lock()

    def push(self) -> None:
        """Add what the log counted since the last push; set the bytes waiting for their sync."""
        p = self.log
        now = {
            "records": p.records,
            "bytes": p.bytes,
            "buffer": p.dropped_buffer,
            "quota": p.dropped_full,
            "error": p.dropped_error,
        }
        with self._lock:
            for key, value in now.items():
                delta = value - self._pushed.get(key, 0)
                if delta > 0:
                    counter = self.records if key == "records" else self.bytes if key == "bytes" else self.dropped[key]
                    counter.inc(delta)
                self._pushed[key] = value
            self.queued.set(p.queued_bytes)


def _encode(entries: list[Entry]) -> bytes:
    """The entries as framed blocks: one block, unless their row shapes differ (then one per run of a shape)."""
    try:
        return frame(BLOCK_MAGIC, encode_block(entries))
    except ValueError:
        return b"".join(frame(BLOCK_MAGIC, encode_block(group)) for group in _groups(entries))


def _groups(entries: list[Entry]) -> Iterator[list[Entry]]:
    """Runs of consecutive entries with one layout (within one model, every entry but odd outputs)."""
    group: list[Entry] = []
    key: tuple[Any, ...] | None = None
    for entry in entries:
        k = _layout(entry)
        if group and k != key:
            yield group
            group = []
        group.append(entry)
        key = k
    if group:
        yield group


# -- reading -------------------------------------------------------------------------------------


@dataclass
class _Summary:
    """What a segment holds, from its block headers: read incrementally as the segment grows."""

    name: SegmentName
    resume: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    ts_min: float = math.inf
    ts_max: float = -math.inf

    def add(self, head: bytes) -> None:
        first, count, _, _, ts_min, ts_max = BLOCK_HEAD.unpack_from(head)
        if self.first_seq is None:
            self.first_seq = first
        self.last_seq = first + count - 1
        self.ts_min, self.ts_max = min(self.ts_min, ts_min), max(self.ts_max, ts_max)


class Found(enum.StrEnum):
    FOUND = "found"  # the log holds it
    EXPIRED = "expired"  # it was logged, and is older than the retention (or its segment was deleted)
    PENDING = "pending"  # its writer runs and has not written it yet (or it was lost to a crash of a live writer)
    UNKNOWN = "unknown"  # no log on the volume holds it


@dataclass(frozen=True)
class Lookup:
    status: Found
    ts: float | None = None


@dataclass(frozen=True)
class Prediction:
    request_id: str
    ts: float
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    model_version: str
    pod: str
    model: str = ""


class PredictionIndex:
    """Which request ids the prediction logs on the volume hold, from a few numbers per segment.

    `own_writer` / `own_issued`: this process's writer id and its last issued seq, so an id
    this process handed out but has not written yet is pending, not unknown.
    """

    def __init__(
        self, directory: Path, *, own_writer: str | None = None, own_issued: Callable[[], int] | None = None
    ) -> None:
        self.directory = directory
        self.own_writer = own_writer
        self.own_issued = own_issued
        self._summaries: dict[str, _Summary] = {}
        self._by_writer: dict[str, list[_Summary]] = {}
        self._expired: dict[str, int] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            listing = list_segments(self.directory)
            by_writer: dict[str, list[_Summary]] = {}
            for sid, (name, path) in listing.items():
                summary = self._summaries.get(sid)
                if summary is None:
                    summary = self._summaries[sid] = _Summary(name)
                summary.name = name  # sealed meanwhile: what was read of it stays valid
                self._grow(summary, path)
                by_writer.setdefault(name.writer, []).append(summary)
            for gone in set(self._summaries) - set(listing):
                del self._summaries[gone]
            for summaries in by_writer.values():
                summaries.sort(key=lambda s: s.name.seq)
            self._by_writer = by_writer
            self._expired = read_tombstones(self.directory)

    @staticmethod
    def _grow(summary: _Summary, path: Path) -> None:
        try:
            if path.stat().st_size <= summary.resume:
                return
            for fr, _ in iter_headers(path, summary.resume, MAGICS, BLOCK_HEAD.size):
                if fr.magic == BLOCK_MAGIC and len(fr.payload) == BLOCK_HEAD.size:
                    summary.add(fr.payload)
                summary.resume = fr.end
        except FileNotFoundError:
            pass  # sealed (renamed) or deleted meanwhile: the next listing finds it again

    def writers(self) -> dict[str, list[_Summary]]:
        return self._by_writer

    def lookup(self, writer: str, seq: int, *, cutoff: float | None = None) -> Lookup:
        """Where (writer, seq) stands; with `cutoff`, a prediction older than it is EXPIRED."""
        summaries = [s for s in self._by_writer.get(writer, []) if s.first_seq is not None]
        live = any(not s.name.sealed for s in self._by_writer.get(writer, []))
        if writer == self.own_writer and self.own_issued is not None:
            live = seq <= self.own_issued()
        if (summaries and seq < (summaries[0].first_seq or 0)) or seq <= self._expired.get(writer, 0):
            return Lookup(Found.EXPIRED)
        for s in summaries:
            assert s.first_seq is not None and s.last_seq is not None
            if s.first_seq <= seq <= s.last_seq:
                return self._in_segment(s, seq, cutoff)
        if summaries and seq < (summaries[-1].last_seq or 0):
            return Lookup(Found.UNKNOWN)  # a group lost to a write error
        return Lookup(Found.PENDING if live else Found.UNKNOWN)

    def _in_segment(self, s: _Summary, seq: int, cutoff: float | None) -> Lookup:
        if cutoff is None or s.ts_min >= cutoff:
            return Lookup(Found.FOUND)
        if s.ts_max < cutoff:
            return Lookup(Found.EXPIRED, s.ts_max)
        block = self._block(s, seq)
        if block is None:
            return Lookup(Found.EXPIRED)
        ts = float(block.ts[seq - block.first_seq])
        return Lookup(Found.FOUND if ts >= cutoff else Found.EXPIRED, ts)

    def _block(self, s: _Summary, seq: int) -> Block | None:
        path = self.directory / s.name.file_name
        try:
            return next((b for _, b in _blocks(path, lambda f, c, _lo, _hi: f <= seq < f + c)), None)
        except FileNotFoundError:
            return None


def write_tombstone(directory: Path, writer: str, seq: int) -> None:
    """Remember that `writer`'s predictions up to `seq` expired (its segments are deleted)."""
    path = directory / f"{writer}{EXPIRED_SUFFIX}"
    if seq > read_tombstones(directory).get(writer, 0):
        atomic_write(path, str(seq).encode())


def read_tombstones(directory: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in (e for e in entries(directory) if e.name.endswith(EXPIRED_SUFFIX)):
        writer = entry.name[: -len(EXPIRED_SUFFIX)]
        with contextlib.suppress(OSError, ValueError):
            found[writer] = int(Path(entry.path).read_text())
    return found


def _segment_meta(path: Path) -> dict[str, Any]:
    header = read_frame(path, 0, (HEADER_MAGIC,))
    if header is None:
        return {}
    try:
        meta = json.loads(header.payload)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _blocks(path: Path, keep: Callable[[int, int, float, float], bool]) -> Iterator[tuple[dict[str, Any], Block]]:
    """The segment's header and its readable blocks for which keep(first_seq, requests, ts_min, ts_max) holds."""
    meta = _segment_meta(path)
    for fr, _ in iter_headers(path, 0, MAGICS, BLOCK_HEAD.size):
        if fr.magic != BLOCK_MAGIC or len(fr.payload) < BLOCK_HEAD.size:
            continue
        first, count, _, _, ts_min, ts_max = BLOCK_HEAD.unpack_from(fr.payload)
        if not keep(first, count, ts_min, ts_max):
            continue
        full = read_frame(path, fr.offset, (BLOCK_MAGIC,))
        if full is not None:
            yield meta, decode_block(full.payload)


def _prediction(name: SegmentName, meta: Mapping[str, Any], block: Block, seq: int) -> Prediction:
    ts, inputs, outputs = block.request(seq)
    version, pod, model = (str(meta.get(k, d)) for k, d in (("model_version", ""), ("pod", name.pod), ("model", "")))
    return Prediction(request_id(name.writer, seq), ts, inputs, outputs, version, pod, model)


def _by_writer_and_seq(directory: Path) -> list[tuple[SegmentName, Path]]:
    return sorted(list_segments(directory).values(), key=lambda item: (item[0].writer, item[0].seq))


def iter_predictions(directory: Path, *, since: float = -math.inf, until: float = math.inf) -> Iterator[Prediction]:
    """Every logged prediction with `since <= ts < until`, segment by segment (writer, then seq order)."""
    for name, path in _by_writer_and_seq(directory):
        try:
            for meta, block in _blocks(path, lambda _f, _c, lo, hi: hi >= since and lo < until):
                for seq in range(block.first_seq, block.last_seq + 1):
                    prediction = _prediction(name, meta, block, seq)
                    if since <= prediction.ts < until:
                        yield prediction
        except FileNotFoundError:
            continue  # deleted by retention meanwhile


def fetch(directory: Path, wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Prediction]:
    """The logged predictions among `wanted` (writer, seq) pairs; reads only the blocks that hold them."""
    by_writer: dict[str, set[int]] = {}
    for writer, seq in wanted:
        by_writer.setdefault(writer, set()).add(seq)
    found: dict[tuple[str, int], Prediction] = {}
    for name, path in _by_writer_and_seq(directory):
        seqs = by_writer.get(name.writer)
        if not seqs:
            continue

        def holds(first: int, count: int, _lo: float, _hi: float, seqs: set[int] = seqs) -> bool:
            return any(first <= s < first + count for s in seqs)

        try:
            for meta, block in _blocks(path, holds):
                for seq in (s for s in seqs if s in block):
                    found[(name.writer, seq)] = _prediction(name, meta, block, seq)
        except FileNotFoundError:
            continue
    return found


__all__ = [
    "BLOCK_MAGIC",
    "FRAME",
    "HEADER_MAGIC",
    "Block",
    "Found",
    "Lookup",
    "Prediction",
    "PredictionIndex",
    "PredictionLog",
    "decode_block",
    "encode_block",
    "fetch",
    "iter_predictions",
    "parse_request_id",
    "read_tombstones",
    "request_id",
    "write_tombstone",
]
