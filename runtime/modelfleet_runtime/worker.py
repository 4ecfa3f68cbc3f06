"""The entry point of one worker process, started by the supervisor (not a user command).

    python -m modelfleet_runtime.worker --worker K --workers N --pod-dir DIR --socket-fd FD --parent PID

The settings come from the MODELFLEET_* variables the supervisor sets (its own
settings, written out); the listening socket is inherited as FD. The worker
asks the kernel for SIGTERM when its parent dies, so a supervisor that is
killed never leaves workers serving on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet_runtime.worker", description=__doc__)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--pod-dir", type=Path, required=True)
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with(args.parent)
    # Before anything creates a metric: this worker's values go to the pod's files.
    from .pod import PodFolder, use_pod_metrics

    folder = PodFolder(args.pod_dir)
    use_pod_metrics(folder, args.worker)
    from .runner import serve_worker
    from .settings import load_settings

    settings = load_settings({}, os.environ)
    listener = socket.socket(fileno=args.socket_fd)
    return serve_worker(settings, listener, folder, args.worker, args.workers)


if __name__ == "__main__":
    sys.exit(main())
