"""The pod as every worker sees it: readiness over all workers, pod-wide /stats and /metrics.

A pod runs one process (`SingleProcess`: the answers describe that process, as
they always did) or a supervisor and N workers (`WorkerView` in each worker).
Whichever worker a request lands on, its answer describes the pod. The
supervisor and its workers share a folder (`PodFolder`):

    supervisor.json     the supervisor: worker count, each slot's pid and restarts, stopping
    worker-K.json       worker K: its pid, state and reason (written on every change)
    window-K.bin        worker K's /stats counts and latency window (metrics.LatencyWindow)
    metrics/            prometheus-client's multiprocess files, one set per slot K

Files are replaced atomically (write, then rename), so a reader sees the old
or the new content, never half. Metric files are named by slot, not by pid: a
restarted worker reopens its slot's files and its counters go on from where the
dead one stopped, so the pod's counters never go down and the folder holds N
sets of files however often workers restart.

The pod is ready only when the supervisor is not stopping and every slot runs
the worker the supervisor started there and that worker is ready.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, generate_latest, values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .metrics import READY_METRIC, SERIES_LABELS, LatencyWindow, summarize

if TYPE_CHECKING:
    from .model_server import ModelServer

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
READY = "ready"
LOADING = "loading"
# A worker slot as the supervisor sees it, before the worker reports for itself.
STARTING = "starting"
RESTARTING = "restarting"
# Which not-ready state names the pod when several workers are not ready.
_PRECEDENCE = ("failed", "draining", RESTARTING, STARTING, LOADING)


class PodView(Protocol):
    """What the pod-wide endpoints answer."""

    def readiness(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def metrics(self) -> bytes: ...


class SingleProcess:
    """A pod of one process: the answers describe this process."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def readiness(self) -> dict[str, Any]:
        s = self.server
        return {
            "ready": s.ready,
            "state": s.state.value,
            "reason": s.reason,
            "model": s.settings.name,
            "version": s.settings.model_version,
        }

    def stats(self) -> dict[str, Any]:
        s = self.server
        summary = s.metrics.summary()
        summary.update(
            model=s.settings.name,
            model_version=s.settings.model_version,
            state=s.state.value,
            queue_depth=s.batcher.queued_rows if s.batcher else 0,
        )
        return summary

    def metrics(self) -> bytes:
        s = self.server
        if s.batcher is not None:
            s.metrics.set_queue_depth(s.batcher.queued_rows)
        return generate_latest(s.registry)


# -- the shared folder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStatus:
    worker: int
    pid: int | None
    state: str
    reason: str
    restarts: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "pid": self.pid,
            "state": self.state,
            "reason": self.reason,
            "restarts": self.restarts,
        }


@dataclass(frozen=True)
class PodReadiness:
    ready: bool
    state: str
    reason: str


def pod_readiness(workers: Sequence[WorkerStatus], stopping: bool) -> PodReadiness:
    """Ready only when every worker is; otherwise the most telling worker's state and reason."""
    if stopping:
        return PodReadiness(False, "draining", "shutting down")
    waiting = [w for w in workers if w.state != READY]
    if not workers:
        return PodReadiness(False, STARTING, "no worker has started yet")
    if not waiting:
        return PodReadiness(
            True, READY, workers[0].reason if len(workers) == 1 else f"all {len(workers)} workers ready"
        )
    rank = {state: i for i, state in enumerate(_PRECEDENCE)}
    worst = min(waiting, key=lambda w: (rank.get(w.state, len(rank)), w.worker))
    return PodReadiness(False, worst.state, f"worker {worst.worker} of {len(workers)}: {worst.reason}")


def _write_json(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


class PodFolder:
    """The files a supervisor and its workers share (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics_dir = root / "metrics"

    def create(self) -> None:
        self.metrics_dir.mkdir(parents=True, exist_ok=True)

    @property
    def supervisor_file(self) -> Path:
        return self.root / "supervisor.json"

    def worker_file(self, worker: int) -> Path:
        return self.root / f"worker-{worker}.json"

    def window_file(self, worker: int) -> Path:
        return self.root / f"window-{worker}.bin"

    def write_supervisor(self, content: dict[str, Any]) -> None:
        _write_json(self.supervisor_file, content)

    def write_worker(self, worker: int, pid: int, state: str, reason: str) -> None:
        _write_json(self.worker_file(worker), {"pid": pid, "state": state, "reason": reason})

    def supervisor(self) -> dict[str, Any]:
        return _read_json(self.supervisor_file) or {}

    def statuses(self, supervisor: dict[str, Any]) -> list[WorkerStatus]:
        """Each slot's worker: the supervisor's record of the slot, and the worker's own report."""
        result = []
        for worker, slot in enumerate(supervisor.get("slots") or []):
            pid, restarts = slot.get("pid"), int(slot.get("restarts") or 0)
            report = _read_json(self.worker_file(worker))
            if pid is None:
                status = WorkerStatus(worker, None, RESTARTING, slot.get("exit") or "not running", restarts)
            elif report is None or report.get("pid") != pid:
                status = WorkerStatus(worker, pid, STARTING, "the worker process is starting", restarts)
            else:
                status = WorkerStatus(worker, pid, str(report.get("state")), str(report.get("reason")), restarts)
            result.append(status)
        return result

    def forget_metrics(self, worker: int) -> None:
        """Drop a dead worker's live gauges (in flight, queue depth...); its counters stay."""
        for path in glob.glob(str(self.metrics_dir / f"gauge_live*_{worker}.db")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def use_pod_metrics(folder: PodFolder, worker: int) -> None:
    """Keep this process's metric values in the pod's files, under this worker's slot.

    Call before any metric is created. prometheus-client picks its value class when first
    imported, from PROMETHEUS_MULTIPROC_DIR; a worker chooses it here instead, so that the
    files are named by slot (`process_identifier`), which prometheus-client allows as long as
    two running processes never share one: the supervisor starts a slot's next worker only
    after the previous one has exited.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.metrics_dir)
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: str(worker))


# -- the pod as a worker answers it --------------------------------------------------------------


class WorkerView:
    """A worker's answers about the whole pod."""

    def __init__(self, server: ModelServer, folder: PodFolder, worker: int, workers: int) -> None:
        self.server = server
        self.folder = folder
        self.worker = worker
        self.workers = workers
        self._windows: dict[int, LatencyWindow] = {worker: server.metrics.window}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PodCollector(self))
        PlatformCollector(registry=self.registry)
        server.on_state = self.publish
        self.publish(server.state, server.reason)

    def publish(self, state: Any, reason: str) -> None:
        self.folder.write_worker(self.worker, os.getpid(), str(getattr(state, "value", state)), reason)

    def _statuses(self) -> tuple[dict[str, Any], list[WorkerStatus]]:
        supervisor = self.folder.supervisor()
        return supervisor, self.folder.statuses(supervisor)

    def readiness(self) -> dict[str, Any]:
        supervisor, statuses = self._statuses()
        pod = pod_readiness(statuses, bool(supervisor.get("stopping")))
        return {
            "ready": pod.ready,
            "state": pod.state,
            "reason": pod.reason,
            "model": self.server.settings.name,
            "version": self.server.settings.model_version,
            "workers": [s.as_json() for s in statuses],
        }

    def _window(self, worker: int) -> LatencyWindow | None:
        window = self._windows.get(worker)
        if window is None:
            try:
                window = LatencyWindow(self.server.metrics.window.size, self.folder.window_file(worker), readonly=True)
            except (OSError, ValueError):  # that worker has not created its file (or not sized it) yet
                return None
            self._windows[worker] = window
        return window

    def stats(self) -> dict[str, Any]:
        if self.server.batcher is not None:
            self.server.metrics.set_queue_depth(self.server.batcher.queued_rows)
        supervisor, statuses = self._statuses()
        windows = {s.worker: self._window(s.worker) for s in statuses}
        summary = summarize([w for w in windows.values() if w is not None])
        pod = pod_readiness(statuses, bool(supervisor.get("stopping")))
        summary.update(
            model=self.server.settings.name,
            model_version=self.server.settings.model_version,
            state=pod.state,
            workers=[
                {
                    **s.as_json(),
                    "count": w.count(LatencyWindow.COUNT) if w else 0,
                    "queue_depth": w.count(LatencyWindow.QUEUE_DEPTH) if w else 0,
                }
                for s, w in ((s, windows[s.worker]) for s in statuses)
            ],
        )
        return summary

    def metrics(self) -> bytes:
        if self.server.batcher is not None:
            self.server.metrics.set_queue_depth(self.server.batcher.queued_rows)
        return generate_latest(self.registry)


class PodCollector(Collector):
    """Every worker's metrics summed from the pod's files, the pod's readiness and processes."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        files = glob.glob(str(view.folder.metrics_dir / "*.db"))
        for family in MultiProcessCollector.merge(files, accumulate=True):
            if family.name != READY_METRIC:
                yield family
        supervisor, statuses = view._statuses()
        pod = pod_readiness(statuses, bool(supervisor.get("stopping")))
        labels = [view.server.settings.name, view.server.settings.model_version]
        yield _gauge(READY_METRIC, "1 when every worker is loaded, warmed up and serving", labels, float(pod.ready))
        yield _gauge("modelfleet_workers", "worker processes the pod runs", labels, float(len(statuses)))
        ready = sum(s.state == READY for s in statuses)
        yield _gauge("modelfleet_workers_ready", "workers loaded, warmed up and serving", labels, float(ready))
        restarts = CounterMetricFamily(
            "modelfleet_worker_restarts", "workers restarted after they exited", labels=list(SERIES_LABELS)
        )
        restarts.add_metric(labels, float(sum(s.restarts for s in statuses)))
        yield restarts
        pids = [p for p in [supervisor.get("pid"), *(s.pid for s in statuses)] if isinstance(p, int)]
        yield from pod_process_families(pids, supervisor.get("pid"))


def _gauge(name: str, documentation: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(SERIES_LABELS))
    family.add_metric(labels, value)
    return family


_SUMMED = {"process_virtual_memory_bytes", "process_resident_memory_bytes", "process_open_fds"}


def _reaped_children_cpu(pid: int | None) -> float:
    """CPU seconds of `pid`'s children that have exited and been waited for (cutime + cstime)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            parts = stat.read().split(b")")[-1].split()
        return (float(parts[13]) + float(parts[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def pod_process_families(pids: Iterable[int], supervisor: Any) -> Iterator[Metric]:
    """The standard process_* series for the pod's processes together.

    Memory, CPU and open files are summed over the supervisor and the live workers; CPU also
    counts workers that have exited (so the counter never goes down); the start time and the
    file limit are the supervisor's (the pod's).
    """
    totals: dict[str, Metric] = {}
    for pid in dict.fromkeys(pids):
        for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():  # type: ignore[misc]
            known = totals.get(family.name)
            if known is None:
                totals[family.name] = family
            elif family.name in _SUMMED or family.name == "process_cpu_seconds":
                known.samples[0] = known.samples[0]._replace(value=known.samples[0].value + family.samples[0].value)
    cpu = totals.get("process_cpu_seconds")
    if cpu is not None and cpu.samples:
        extra = _reaped_children_cpu(supervisor if isinstance(supervisor, int) else None)
        cpu.samples[0] = cpu.samples[0]._replace(value=cpu.samples[0].value + extra)
    yield from totals.values()


__all__ = [
    "METRICS_CONTENT_TYPE",
    "PodFolder",
    "PodReadiness",
    "PodView",
    "SingleProcess",
    "WorkerStatus",
    "WorkerView",
    "pod_readiness",
    "use_pod_metrics",
]
