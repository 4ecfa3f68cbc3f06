"""Durable file writes on a volume other processes read: whole files appear atomically, and stay.

`atomic_write` is for files a reader must see either entirely or not at all
(the feedback volume's manifest, the trainer's model.onnx and metrics.json):
the bytes go to a temporary file beside the target, are fsync'd, renamed over
the target, and the folder is fsync'd so the rename survives a crash. The
temporary name starts with TMP_PREFIX, which readers of a folder skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make the folder's entries (creations, renames, removals) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync, rename, fsync the folder.

    A reader sees the old file or the new one, never a part; the temporary file is
    removed when writing fails.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(3)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


__all__ = ["TMP_PREFIX", "atomic_write", "fsync_dir"]
