"""Append-only segment files on the shared feedback volume: names, record framing, scanning, sealing.

Both logs on the volume (labels/ and predictions/) are folders of segments, each
written by exactly one process (a pod, or one worker of a pod):

    <pod>_<writer>_<seq>.open.mflog   a segment its live writer still appends to
    <pod>_<writer>_<seq>.mflog        a sealed segment (rotated, closed, or left by a dead writer)

`<writer>` is 16 hex digits drawn at random when the process starts, so two
processes (pods, workers, restarts) never share a segment or a request id.
A segment is a sequence of records, each framed as

    magic (4 bytes) | payload length (u32 LE) | crc32 of the payload (u32 LE) | payload

so a torn or corrupted record is detected and never mis-read. A live writer
holds an exclusive flock on its open segment; whoever can take that lock knows
the writer died and may seal the segment. In an open segment reading stops at
the first incomplete or bad record (the writer may not have finished it; on NFS
unsynced bytes may read as zeros); in a sealed one a bad record is skipped by
searching for the next valid frame.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import socket
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .durable import TMP_PREFIX, fsync_dir

log = logging.getLogger("modelfleet.segments")

OPEN_SUFFIX = ".open.mflog"
SEALED_SUFFIX = ".mflog"
FRAME = struct.Struct("<4sII")
MAX_RECORD_BYTES = 1 << 30
_READ_CHUNK = 1 << 20
WRITER_ID = re.compile(r"[0-9a-f]{16}")


def new_writer_id() -> str:
    return secrets.token_hex(8)


def pod_name() -> str:
    raw = os.environ.get("HOSTNAME") or socket.gethostname() or ""
    name = re.sub(r"[^A-Za-z0-9.-]", "-", raw).strip(".-")
    return name or "pod-" + secrets.token_hex(4)


@dataclass(frozen=True)
class SegmentName:
    """What a segment's file name says: `<pod>_<writer>_<seq>` plus the open or sealed suffix."""

    pod: str
    writer: str
    seq: int
    sealed: bool

    @property
    def id(self) -> str:
        return f"{self.pod}_{self.writer}_{self.seq:06d}"

    @property
    def file_name(self) -> str:
        return self.id + (SEALED_SUFFIX if self.sealed else OPEN_SUFFIX)

    @classmethod
    def parse(cls, name: str) -> SegmentName | None:
        if name.startswith((".", TMP_PREFIX)):
            return None
        if name.endswith(OPEN_SUFFIX):
            stem, sealed = name[: -len(OPEN_SUFFIX)], False
        elif name.endswith(SEALED_SUFFIX):
            stem, sealed = name[: -len(SEALED_SUFFIX)], True
        else:
            return None
        parts = stem.rsplit("_", 2)
        if len(parts) != 3 or not WRITER_ID.fullmatch(parts[1]) or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), sealed)


def entries(directory: Path) -> list[os.DirEntry[str]]:
    """The folder's entries; none when it does not exist (yet, or any more)."""
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []


def list_segments(directory: Path) -> dict[str, tuple[SegmentName, Path]]:
    """Segment id -> (name, path); a segment seen both open and sealed (sealed meanwhile) counts as sealed."""
    found: dict[str, tuple[SegmentName, Path]] = {}
    for entry in entries(directory):
        name = SegmentName.parse(entry.name)
        if name is None:
            continue
        if name.id not in found or name.sealed:
            found[name.id] = (name, Path(entry.path))
    return found


# -- framing -------------------------------------------------------------------------------------


def frame(magic: bytes, payload: bytes) -> bytes:
    return FRAME.pack(magic, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Frame:
    """One valid record of a segment: its magic, where it starts and ends, and its payload."""

    magic: bytes
    offset: int
    end: int
    payload: bytes


@dataclass
class ScanResult:
    frames: list[Frame]
    resume: int  # where the next scan of this segment continues
    corrupt: int = 0


def _valid(data: bytes, at: int, magics: tuple[bytes, ...]) -> tuple[bytes, int] | None:
    """(magic, payload end) of a complete valid frame at `at` in `data`, else None."""
    if at + FRAME.size > len(data):
        return None
    magic, length, crc = FRAME.unpack_from(data, at)
    if magic not in magics or length > MAX_RECORD_BYTES:
        return None
    end = at + FRAME.size + length
    if end > len(data) or zlib.crc32(memoryview(data)[at + FRAME.size : end]) != crc:
        return None
    return magic, end


def scan(path: Path, start: int, magics: tuple[bytes, ...], *, sealed: bool, keep_payloads: bool = True) -> ScanResult:
    """Valid frames from `start` on.

    In an open segment scanning stops at the first frame that is not (yet) complete and
    valid; in a sealed one a bad frame is counted and skipped up to the next valid frame.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    result = ScanResult(frames=[], resume=start)
    at = 0
    while at + FRAME.size <= len(data):
        found = _valid(data, at, magics)
        if found is not None:
            magic, end = found
            payload = data[at + FRAME.size : end] if keep_payloads else b""
            result.frames.append(Frame(magic, start + at, start + end, payload))
            at = end
            result.resume = start + at
            continue
        if not sealed:
            break
        at = _next_frame(data, at + 1, magics)
        # Bad bytes followed by a valid frame are corruption; a torn tail is a writer that died.
        result.corrupt += at < len(data)
        result.resume = start + at
    if sealed:
        result.resume = start + len(data)
    return result


def _next_frame(data: bytes, at: int, magics: tuple[bytes, ...]) -> int:
    """The offset of the next valid frame at or after `at` (len(data) when there is none)."""
    while True:
        hits = [i for i in (data.find(m, at) for m in magics) if i >= 0]
        if not hits:
            return len(data)
        at = min(hits)
        if _valid(data, at, magics) is not None:
            return at
        at += 1


def iter_headers(path: Path, start: int, magics: tuple[bytes, ...], head: int) -> Iterator[tuple[Frame, int]]:
    """Frames from `start` with only the first `head` bytes of each payload read, and their length.

    Stops at the first frame whose header is bad or incomplete (the caller reads payloads it
    needs with their crc checked).
    """
    with open(path, "rb", buffering=_READ_CHUNK) as f:
        f.seek(start)
        at = start
        while True:
            header = f.read(FRAME.size)
            if len(header) < FRAME.size:
                return
            magic, length, _ = FRAME.unpack(header)
            if magic not in magics or length > MAX_RECORD_BYTES:
                return
            first = f.read(min(head, length))
            if len(first) < min(head, length):
                return
            end = at + FRAME.size + length
            if f.seek(end) != end or end > os.fstat(f.fileno()).st_size:
                return
            yield Frame(magic, at, end, first), length
            at = end


def read_frame(path: Path, offset: int, magics: tuple[bytes, ...]) -> Frame | None:
    """The valid frame at `offset`, or None."""
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(FRAME.size)
        if len(header) < FRAME.size:
            return None
        magic, length, crc = FRAME.unpack(header)
        if magic not in magics or length > MAX_RECORD_BYTES:
            return None
        payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return Frame(magic, offset, offset + FRAME.size + length, payload)


# -- writing and sealing -------------------------------------------------------------------------


def try_lock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False when someone holds it (or locks are unsupported)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        return False


def seal_abandoned(directory: Path, *, skip_writer: str | None = None) -> list[str]:
    """Seal open segments whose writer is gone (its lock is free); returns their ids.

    A writer passes its own id: where flock is emulated with POSIX locks (NFS), probing
    its own file would release the lock it holds.
    """
    sealed = []
    for sid, (name, path) in sorted(list_segments(directory).items()):
        if name.sealed or name.writer == skip_writer:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            if try_lock(fd):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, directory / (sid + SEALED_SUFFIX))
                    sealed.append(sid)
        finally:
            os.close(fd)
    if sealed:
        fsync_dir(directory)
        log.info("sealed %d segment(s) left open by writers that are gone: %s", len(sealed), ", ".join(sealed))
    return sealed


class SegmentAppender:
    """One writer's segments in one folder: open, append (write + fdatasync), rotate, seal. Not thread-safe.

    `header` is written as the first record of every segment the appender opens. With
    `deferred_sync`, appends are written without a sync and a sealed segment's descriptor is
    kept open until `take_for_sync` hands it, with a duplicate of the current one, to whoever syncs.
    """

    def __init__(
        self, directory: Path, pod: str, writer: str, header: bytes, segment_bytes: int, *, deferred_sync: bool = False
    ) -> None:
        self.directory = directory
        self.pod = pod
        self.writer = writer
        self.header = header
        self.segment_bytes = max(1, segment_bytes)
        self._seq = 0
        self._fd: int | None = None
        self.name: SegmentName | None = None
        self.size = 0
        self.opened_at = 0.0
        self._prepared = False
        self.deferred_sync = deferred_sync
        self._retired: list[int] = []  # sealed segments' descriptors, not yet synced (deferred_sync)

    def append(self, data: bytes, *, now: float, sync: bool = True) -> int:
        """Write `data` (whole records) to the current segment; returns the offset it starts at."""
        if not self._prepared:
            self.directory.mkdir(parents=True, exist_ok=True)
            seal_abandoned(self.directory, skip_writer=self.writer)
            self._prepared = True
        if self._fd is not None and self.size > len(self.header) and self.size + len(data) > self.segment_bytes:
            self.seal()
        if self._fd is None:
            self._open_next(now)
        assert self._fd is not None
        start = self.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
            if sync:
                self.sync()
        except OSError:
            # What reached the file may end in a partial record: never append after it.
            with contextlib.suppress(OSError):
                self.seal()
            raise
        return start

    def renames_for(self, size: int) -> bool:
        """Whether appending `size` bytes now creates or renames a file (a first append, a rotation)."""
        if not self._prepared or self._fd is None:
            return True
        return self.size > len(self.header) and self.size + size > self.segment_bytes

    def sync(self) -> None:
        if self._fd is not None:
            (getattr(os, "fdatasync", None) or os.fsync)(self._fd)

    def take_for_sync(self) -> list[int]:
        """Descriptors that cover everything appended so far, for the caller to sync and close.

        A duplicate of the current segment's (so that a seal meanwhile cannot close it under the
        caller), and those of segments sealed since the last call.
        """
        fds, self._retired = self._retired, []
        if self._fd is not None:
            fds.append(os.dup(self._fd))
        return fds

    def _open_next(self, now: float) -> None:
        self._seq += 1
        name = SegmentName(self.pod, self.writer, self._seq, sealed=False)
        tmp = self.directory / f"{TMP_PREFIX}{name.id}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            # Locked before it gets its visible name, so no one ever sees it open and unlocked.
            if not try_lock(fd):
                log.warning(
                    "file locks are not available on %s; open segments cannot be told from abandoned ones",
                    self.directory,
                )
            os.write(fd, self.header)
            os.rename(tmp, self.directory / name.file_name)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fd, self.name, self.size, self.opened_at = fd, name, len(self.header), now

    def seal(self) -> None:
        fd, name = self._fd, self.name
        self._fd, self.name, self.size = None, None, 0
        if fd is None or name is None:
            return
        try:
            sealed = SegmentName(name.pod, name.writer, name.seq, sealed=True)
            os.rename(self.directory / name.file_name, self.directory / sealed.file_name)
            fsync_dir(self.directory)
        finally:
            if self.deferred_sync:
                self._retired.append(fd)
            else:
                os.close(fd)


__all__ = [
    "FRAME",
    "OPEN_SUFFIX",
    "SEALED_SUFFIX",
    "Frame",
    "ScanResult",
    "SegmentAppender",
    "SegmentName",
    "entries",
    "frame",
    "iter_headers",
    "list_segments",
    "new_writer_id",
    "pod_name",
    "read_frame",
    "scan",
    "seal_abandoned",
    "try_lock",
]
