"""A request_id is labelled once: one exclusive claim per id on the shared volume, no lock server.

`claims/<writer>/<seq>` (the two parts of the request id) is a symbolic link
whose target names the label record that holds the id's label,
`<label segment id>@<offset>`. The label is appended and fsync'd first, then
the claim is made: `symlink(2)` creates the name or fails with EEXIST,
atomically, on a local filesystem and on NFS (one SYMLINK call, decided by the
server, which commits it to stable storage before it answers). So of two pods
or workers labelling one id at once exactly one gets the claim; the other
answers 409, and its record, which the claim does not name, is ignored by
every reader. A crash between the append and the claim leaves a record no
claim names (never acknowledged, ignored); a retry claims afresh.

On NFS a retransmitted SYMLINK whose first attempt succeeded answers EEXIST:
the claim is ours when its target is exactly our record. The volume must
support symbolic links (local disks, NFS, CephFS, EFS, Filestore, Azure Files
over NFS; not SMB without `mfsymlinks`): a volume that refuses them is reported
as `ClaimsUnsupported`.

Claims live as long as their predictions: when retention deletes a writer's
oldest prediction segments, the claims of the ids they held go too (a label for
such an id is refused as expired before any claim is looked at).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .durable import fsync_dir
from .segments import entries


class ClaimsUnsupported(OSError):
    """The feedback volume cannot hold symbolic links, so a request_id cannot be claimed once."""


def target(segment_id: str, offset: int) -> str:
    return f"{segment_id}@{offset}"


def parse_target(text: str) -> tuple[str, int] | None:
    segment_id, at, offset = text.rpartition("@")
    return (segment_id, int(offset)) if at and offset.isdigit() else None


def _path(root: Path, writer: str, seq: int) -> Path:
    return root / writer / f"{seq:x}"


def claim(root: Path, writer: str, seq: int, record: str) -> bool:
    """Claim (writer, seq) for `record`; False when another record holds it."""
    path = _path(root, writer, seq)
    for _ in range(3):
        try:
            os.symlink(record, path)
            return True
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                return os.readlink(path) == record
            # Deleted between the two calls (its prediction expired): try once more.
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise ClaimsUnsupported(
                    exc.errno, f"the feedback volume {root.parent} does not support symbolic links: {exc.strerror}"
                ) from exc
            raise
    raise OSError(errno.EAGAIN, f"could not claim {path}")


def holder(root: Path, writer: str, seq: int) -> str | None:
    """The record that holds the claim of (writer, seq), or None."""
    try:
        return os.readlink(_path(root, writer, seq))
    except (FileNotFoundError, NotADirectoryError):
        return None


def claimed(root: Path, writer: str, seq: int) -> bool:
    return os.path.lexists(_path(root, writer, seq))


def sync(root: Path, writers: Iterable[str]) -> None:
    """Make new claims durable (one fsync per writer folder touched)."""
    for writer in set(writers):
        fsync_dir(root / writer)


def sweep(root: Path, writer: str, below: int | None) -> int:
    """Remove the claims of `writer` with a seq below `below` (None: all, and the folder); returns how many."""
    directory = root / writer
    removed = 0
    for entry in entries(directory):
        try:
            seq = int(entry.name, 16)
        except ValueError:
            continue
        if below is None or seq < below:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    if below is None:
        with contextlib.suppress(OSError):  # a claim made meanwhile keeps the folder
            directory.rmdir()
    if removed:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(directory if directory.exists() else root)
    return removed


def writers(root: Path) -> list[str]:
    return [e.name for e in entries(root) if e.is_dir(follow_symlinks=False)]


def count(root: Path) -> int:
    return sum(len(entries(root / writer)) for writer in writers(root))


__all__ = ["ClaimsUnsupported", "claim", "claimed", "count", "holder", "parse_target", "sweep", "sync", "target"]
