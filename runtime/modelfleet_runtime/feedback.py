"""The durable log of labelled samples on the shared feedback volume.

Every server pod appends to its own segment files; the retraining Job reads
all of them and records what it consumed. Nothing here knows about HTTP.

On disk (one folder, the feedback volume):

    <pod>_<start>_<seq>.open.jsonl   a segment a live writer still appends to
    <pod>_<start>_<seq>.jsonl        a sealed segment (rotated, closed, or left by a dead writer)
    consumed.json                    segment id -> byte offset up to which samples are consumed
    consumed/                        sealed segments whose samples are all consumed

A segment's id is its name without `.open.jsonl` / `.jsonl`; `<start>` is unique
per writer process, so an id is never reused. Each line is one JSON object

    {"features":[...],"label":L,"ts":T,"model_version":"V","crc32":"xxxxxxxx"}

where crc32 covers the same line written without its crc32 member, so a torn
or corrupted line is detected and never mis-read. A live writer holds an
exclusive flock on its open segment; whoever can take that lock knows the
writer died and may seal the segment. In an open segment reading stops at the
first incomplete or bad line (the writer may not have finished it, and on NFS
unsynced bytes may read as zeros); in a sealed one bad lines are skipped.

Consumption: a trainer reads unconsumed samples with their (segment, end
offset), trains, writes its outputs, then commits the end offsets to
consumed.json with one atomic rename. A trainer killed before the rename
consumed nothing; offsets only move forward, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .durable import TMP_PREFIX, atomic_write, fsync_dir

log = logging.getLogger("modelfleet.feedback")

OPEN_SUFFIX = ".open.jsonl"
SEALED_SUFFIX = ".jsonl"
MANIFEST = "consumed.json"
CONSUMED_DIR = "consumed"
_CRC_HEAD = b',"crc32":"'
_CRC_TAIL = b'"}\n'
# ,"crc32":"xxxxxxxx"}\n
_SUFFIX_LEN = len(_CRC_HEAD) + 8 + len(_CRC_TAIL)
_READ_CHUNK = 1 << 20

Label = float | list[float]


class FeedbackWriteError(OSError):
    """Samples could not be written or fsync'd; they were not acknowledged."""


class ConsumptionConflict(RuntimeError):
    """Another training run moved the consumed offsets since this one read them."""


@dataclass(frozen=True)
class Sample:
    features: list[float]
    label: Label
    ts: float = 0.0
    model_version: str = ""


@dataclass(frozen=True)
class Record:
    """A sample read from the volume; `end` is the offset just past its line."""

    segment: str
    offset: int
    end: int
    sample: Sample


# -- line format ---------------------------------------------------------------------------------


def encode_line(sample: Sample) -> bytes:
    payload = json.dumps(
        {"features": sample.features, "label": sample.label, "ts": sample.ts, "model_version": sample.model_version},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    crc = zlib.crc32(payload)
    return payload[:-1] + _CRC_HEAD + b"%08x" % crc + _CRC_TAIL


def _payload_of(line: bytes) -> bytes | None:
    """The checksummed JSON of one complete line (ending in a newline), or None when it is bad."""
    if len(line) <= _SUFFIX_LEN or line[:1] != b"{" or not line.endswith(_CRC_TAIL):
        return None
    head = len(line) - _SUFFIX_LEN
    if line[head : head + len(_CRC_HEAD)] != _CRC_HEAD:
        return None
    try:
        expected = int(line[head + len(_CRC_HEAD) : head + len(_CRC_HEAD) + 8], 16)
    except ValueError:
        return None
    payload = line[:head] + b"}"
    return payload if zlib.crc32(payload) == expected else None


def decode_line(line: bytes) -> Sample | None:
    payload = _payload_of(line)
    if payload is None:
        return None
    try:
        obj = json.loads(payload)
        return Sample(list(obj["features"]), obj["label"], float(obj.get("ts", 0.0)), str(obj.get("model_version", "")))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class _Scan:
    """What reading a segment from `start` found: valid line starts/ends, bad lines, where to resume."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    corrupt: int = 0
    resume: int = 0


def _scan(path: Path, start: int, *, sealed: bool, keep_lines: bool) -> _Scan:
    """Read complete lines from `start`; `resume` is where the next scan continues."""
    result = _Scan(resume=start)
    with open(path, "rb") as f:
        f.seek(start)
        pos, rest = start, b""
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                return result
            data = rest + chunk
            line_start = 0
            while (nl := data.find(b"\n", line_start)) >= 0:
                line = data[line_start : nl + 1]
                offset = pos + line_start
                if _payload_of(line) is not None:
                    result.starts.append(offset)
                    result.ends.append(offset + len(line))
                    if keep_lines:
                        result.lines.append(line)
                elif not sealed:
                    # The writer may still be completing these bytes: stop here, look again later.
                    return result
                else:
                    result.corrupt += 1
                line_start = nl + 1
                result.resume = pos + line_start
            pos += line_start
            rest = data[line_start:]


# -- naming --------------------------------------------------------------------------------------


def _pod_name() -> str:
    raw = os.environ.get("HOSTNAME") or socket.gethostname() or ""
    name = re.sub(r"[^A-Za-z0-9.-]", "-", raw).strip(".-")
    return name or "pod-" + secrets.token_hex(4)


def segment_id(name: str) -> str | None:
    if name.startswith((".", TMP_PREFIX)):
        return None
    if name.endswith(OPEN_SUFFIX):
        return name[: -len(OPEN_SUFFIX)]
    if name.endswith(SEALED_SUFFIX):
        return name[: -len(SEALED_SUFFIX)]
    return None


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False when someone holds it (or locks are unsupported)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        return False


def seal_abandoned(directory: Path, *, skip_prefix: str | None = None) -> list[str]:
    """Seal open segments whose writer is gone (its lock is free); returns their ids.

    A writer passes its own prefix: where flock is emulated with POSIX locks
    (NFS), probing its own file would release the lock it holds.
    """
    sealed = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.name.endswith(OPEN_SUFFIX) or entry.name.startswith(TMP_PREFIX):
            continue
        if skip_prefix is not None and entry.name.startswith(skip_prefix):
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            if _try_lock(fd):
                sid = entry.name[: -len(OPEN_SUFFIX)]
                with contextlib.suppress(FileNotFoundError):
                    os.rename(entry.path, directory / (sid + SEALED_SUFFIX))
                    sealed.append(sid)
        finally:
            os.close(fd)
    if sealed:
        fsync_dir(directory)
        log.info("sealed %d segment(s) left open by writers that are gone: %s", len(sealed), ", ".join(sealed))
    return sealed


# -- writing -------------------------------------------------------------------------------------


class FeedbackWriter:
    """This process's appender: group commit of concurrent appends, one write + fsync per group.

    `on_sync(seconds, samples)` is called on the event loop after each successful group.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        pod: str | None = None,
        segment_bytes: int = 16 * 1024 * 1024,
        on_sync: Callable[[float, int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.pod = pod or _pod_name()
        self.segment_bytes = max(1, segment_bytes)
        self.on_sync = on_sync
        self._start = f"{time.time_ns():x}{secrets.token_hex(2)}"
        self._seq = 0
        self._fd: int | None = None
        self._segment: str | None = None
        self._size = 0
        self._prepared = False
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io_lock = threading.Lock()
        self.appended = 0

    @property
    def segment(self) -> str | None:
        """The id of the segment this writer appends to now."""
        return self._segment

    @property
    def waiting(self) -> int:
        """Appends waiting for the next group commit (the current one, if any, not counted)."""
        return len(self._pending)

    async def append(self, samples: Sequence[Sample]) -> None:
        """Return once every sample is written and fsync'd; raise FeedbackWriteError otherwise."""
        data = b"".join(encode_line(s) for s in samples)
        if not data:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, len(samples), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_groups(), name="modelfleet-feedback-flush")
        # A cancelled request does not cancel the shared write.
        await asyncio.shield(future)

    async def _flush_groups(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            count = sum(n for _, n, _ in group)
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._write, b"".join(d for d, _, _ in group))
            except Exception as exc:  # every waiter of this group learns that its samples are not durable
                log.error("could not write %d feedback sample(s) to %s: %s", count, self.directory, exc)
                error = exc if isinstance(exc, FeedbackWriteError) else FeedbackWriteError(str(exc))
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.appended += count
            if self.on_sync is not None:
                try:
                    self.on_sync(time.perf_counter() - started, count)
                except Exception:  # an observer must never leave the waiters hanging
                    log.exception("feedback on_sync observer failed")
            for _, _, future in group:
                if not future.done():
                    future.set_result(None)

    def _write(self, data: bytes) -> None:
        with self._io_lock:
            try:
                if not self._prepared:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    seal_abandoned(self.directory, skip_prefix=f"{self.pod}_{self._start}_")
                    self._prepared = True
                if self._fd is not None and self._size > 0 and self._size + len(data) > self.segment_bytes:
                    self._seal_current()
                if self._fd is None:
                    self._open_next()
                assert self._fd is not None
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                    self._size += written
                (getattr(os, "fdatasync", None) or os.fsync)(self._fd)
            except OSError as exc:
                # What reached the file may end in a partial line: never append after it.
                with contextlib.suppress(OSError):
                    self._seal_current()
                raise FeedbackWriteError(f"feedback volume {self.directory}: {exc}") from exc

    def _open_next(self) -> None:
        self._seq += 1
        sid = f"{self.pod}_{self._start}_{self._seq:06d}"
        tmp = self.directory / f"{TMP_PREFIX}{sid}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            # Locked before it gets its visible name, so no one ever sees it open and unlocked.
            if not _try_lock(fd):
                log.warning(
                    "file locks are not available on %s; open segments cannot be told from abandoned ones",
                    self.directory,
                )
            os.rename(tmp, self.directory / (sid + OPEN_SUFFIX))
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fd, self._segment, self._size = fd, sid, 0

    def _seal_current(self) -> None:
        fd, sid = self._fd, self._segment
        self._fd, self._segment, self._size = None, None, 0
        if fd is None or sid is None:
            return
        try:
            os.rename(self.directory / (sid + OPEN_SUFFIX), self.directory / (sid + SEALED_SUFFIX))
            fsync_dir(self.directory)
        finally:
            os.close(fd)

    async def close(self) -> None:
        """Finish pending appends and seal the current segment."""
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._io_lock, contextlib.suppress(OSError):
            self._seal_current()


# -- reading and consuming -----------------------------------------------------------------------


@dataclass
class _Cached:
    sealed: bool
    resume: int
    starts: array[int] = field(default_factory=lambda: array("q"))
    corrupt: int = 0
    last_end: int = 0


@dataclass(frozen=True)
class LogStats:
    unconsumed: int
    segments: int
    open_segments: int
    corrupt_records: int


class FeedbackVolume:
    """Every pod's segments in one folder: counting, reading and committing consumption.

    Counting is incremental: segments only grow, so each call reads only the
    bytes appended since the previous call.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    # segments and the manifest

    def _segments(self) -> dict[str, tuple[Path, bool]]:
        found: dict[str, tuple[Path, bool]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            sid = segment_id(entry.name)
            if sid is None or not entry.is_file():
                continue
            sealed = not entry.name.endswith(OPEN_SUFFIX)
            if sid not in found or sealed:
                found[sid] = (Path(entry.path), sealed)
        return found

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads((self.directory / MANIFEST).read_bytes())
        except FileNotFoundError:
            return {"segments": {}}
        if not isinstance(manifest, dict) or not isinstance(manifest.get("segments"), dict):
            raise ValueError(f"{self.directory / MANIFEST} is not a consumption manifest")
        return manifest

    def consumed_offsets(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.read_manifest()["segments"].items()}

    # counting

    def _refresh(self, sid: str, path: Path, sealed: bool) -> _Cached:
        cached = self._cache.get(sid)
        if cached is None:
            cached = self._cache[sid] = _Cached(sealed=sealed, resume=0)
        if sealed and not cached.sealed:
            cached.sealed = True  # from now on bad lines are skipped instead of waited for
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if sealed:
                return cached  # moved to consumed/ meanwhile
            # Sealed between listing and stat.
            path, cached.sealed = path.with_name(sid + SEALED_SUFFIX), True
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return cached
        if size <= cached.resume:
            return cached
        try:
            scan = _scan(path, cached.resume, sealed=cached.sealed, keep_lines=False)
        except FileNotFoundError:
            return cached
        cached.starts.extend(scan.starts)
        cached.corrupt += scan.corrupt
        cached.resume = scan.resume
        if scan.ends:
            cached.last_end = scan.ends[-1]
        return cached

    def stats(self) -> LogStats:
        with self._lock:
            segments = self._segments()
            consumed = self.consumed_offsets()
            unconsumed = corrupt = opened = 0
            for sid, (path, sealed) in segments.items():
                cached = self._refresh(sid, path, sealed)
                unconsumed += len(cached.starts) - bisect.bisect_left(cached.starts, consumed.get(sid, 0))
                corrupt += cached.corrupt
                opened += not cached.sealed
            for gone in set(self._cache) - set(segments):
                del self._cache[gone]
            return LogStats(unconsumed, len(segments), opened, corrupt)

    def count_unconsumed(self) -> int:
        return self.stats().unconsumed

    # reading for training

    def iter_unconsumed(self, consumed: Mapping[str, int] | None = None) -> Iterator[Record]:
        """Every readable sample after the consumed offset of its segment, segment by segment.

        Pass the offsets you read (and will give to `commit` as `expected`) to read from exactly them.
        """
        consumed = self.consumed_offsets() if consumed is None else consumed
        for sid, (path, sealed) in sorted(self._segments().items()):
            start = consumed.get(sid, 0)
            try:
                scan = _scan(path, start, sealed=sealed, keep_lines=True)
            except FileNotFoundError:
                # Sealed between listing and opening.
                path = path.with_name(sid + SEALED_SUFFIX)
                if not path.exists():
                    continue
                scan = _scan(path, start, sealed=True, keep_lines=True)
            for offset, end, line in zip(scan.starts, scan.ends, scan.lines, strict=True):
                sample = decode_line(line)
                if sample is not None:
                    yield Record(sid, offset, end, sample)

    @staticmethod
    def positions(records: Sequence[Record]) -> dict[str, int]:
        """The end offset of the last record read in each segment: what a commit consumes."""
        ends: dict[str, int] = {}
        for r in records:
            ends[r.segment] = max(ends.get(r.segment, 0), r.end)
        return ends

    def commit(
        self,
        positions: Mapping[str, int],
        *,
        expected: Mapping[str, int] | None = None,
        run: Mapping[str, Any] | None = None,
    ) -> None:
        """Mark everything before `positions` consumed, atomically.

        `expected` is the offsets the caller read from; a different manifest now
        means a concurrent run consumed samples, and nothing is committed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".consume.lock", "a+") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            manifest = self.read_manifest()
            offsets = {k: int(v) for k, v in manifest["segments"].items()}
            if expected is not None:
                for sid in set(positions) | set(expected):
                    if offsets.get(sid, 0) != expected.get(sid, 0):
                        raise ConsumptionConflict(
                            f"segment {sid} was consumed up to {offsets.get(sid, 0)} by another training run "
                            f"(this run read from {expected.get(sid, 0)}); nothing was committed"
                        )
            for sid, end in positions.items():
                offsets[sid] = max(offsets.get(sid, 0), int(end))
            present = set(self._segments())
            # Entries of segments moved to consumed/ are dropped only once the file is gone.
            offsets = {k: v for k, v in offsets.items() if k in present or k in positions}
            updated: dict[str, Any] = {"segments": dict(sorted(offsets.items())), "updated": time.time()}
            if run is not None or "last_run" in manifest:
                updated["last_run"] = dict(run) if run is not None else manifest["last_run"]
            atomic_write(self.directory / MANIFEST, json.dumps(updated, indent=1).encode())
            with self._lock:
                self._archive(offsets)

    def _archive(self, offsets: Mapping[str, int]) -> None:
        """Move sealed segments with nothing left to read into consumed/ (keeps the folder small)."""
        moved = False
        for sid, (path, sealed) in self._segments().items():
            if not sealed or sid not in offsets:
                continue
            cached = self._refresh(sid, path, sealed)
            if bisect.bisect_left(cached.starts, offsets[sid]) < len(cached.starts):
                continue
            target = self.directory / CONSUMED_DIR
            target.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, target / path.name)
                moved = True
        if moved:
            fsync_dir(self.directory)

    def seal_abandoned(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return seal_abandoned(self.directory)


__all__ = [
    "ConsumptionConflict",
    "FeedbackVolume",
    "FeedbackWriteError",
    "FeedbackWriter",
    "LogStats",
    "Record",
    "Sample",
    "decode_line",
    "encode_line",
    "seal_abandoned",
]
