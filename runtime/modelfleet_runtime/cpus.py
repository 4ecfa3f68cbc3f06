"""How many CPUs this container may use: its cgroup CPU quota, else the CPUs it may run on.

`--workers 0` starts one worker per usable CPU, and the supervisor sizes each
worker's onnxruntime threads so that workers x threads stay within them.
`os.cpu_count()` is the node's count, not the container's: a pod limited to
2 CPUs on a 64-core node would start 64 workers that the kernel then throttles.

The quota is cgroup v2's `cpu.max` ("max 100000" or "QUOTA PERIOD") or cgroup
v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none), read for this
process's cgroup and each of its ancestors (the lowest quota wins). A fraction
of a CPU rounds down (1.5 CPUs -> 1 worker; never fewer than 1): a worker that
cannot get a whole CPU is throttled, which costs more tail latency than one
worker fewer costs throughput.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")


def v2_quota(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` text; None when unlimited or unreadable."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def v1_quota(cfs_quota_us: str, cfs_period_us: str) -> float | None:
    """CPUs granted by cgroup v1's CFS quota and period; None when unlimited (-1) or unreadable."""
    try:
        quota, period = int(cfs_quota_us.strip()), int(cfs_period_us.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(quotas: Iterable[float | None], affinity: int) -> int:
    """Whole CPUs within every quota and the affinity mask, at least 1."""
    limits = [q for q in quotas if q is not None]
    allowed = min([affinity, *(math.floor(q) for q in limits)]) if limits else affinity
    return max(1, allowed)


def _cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and cgroup v1 `cpu` controller path, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str | None) -> list[Path]:
    """root/path and each folder above it up to root (a container usually sees its own cgroup at root)."""
    folders = [root]
    if path:
        relative = PurePosixPath(path.lstrip("/"))
        parts = relative.parts
        folders += [root.joinpath(*parts[: i + 1]) for i in range(len(parts))]
    return folders


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_quotas(root: Path = CGROUP_ROOT, proc_self_cgroup: str | None = None) -> list[float | None]:
    """Every CPU quota that applies to this process, from the cgroup files under `root`."""
    if proc_self_cgroup is None:
        proc_self_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2_path, v1_path = _cgroup_paths(proc_self_cgroup)
    quotas: list[float | None] = []
    for folder in _ancestors(root, v2_path):
        text = _read(folder / "cpu.max")
        if text is not None:
            quotas.append(v2_quota(text))
    for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        for folder in _ancestors(mount, v1_path):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                quotas.append(v1_quota(quota, period))
    return quotas


def _affinity() -> int:
    sched_getaffinity: Callable[[int], set[int]] | None = getattr(os, "sched_getaffinity", None)
    if sched_getaffinity is not None:
        return len(sched_getaffinity(0))
    return os.cpu_count() or 1


def container_cpus() -> int:
    """The whole CPUs this process may use: its cgroup quotas and its affinity mask."""
    return usable_cpus(cgroup_quotas(), _affinity())


__all__ = ["cgroup_quotas", "container_cpus", "usable_cpus", "v1_quota", "v2_quota"]
