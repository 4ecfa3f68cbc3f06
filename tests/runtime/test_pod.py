"""The pod as one: readiness over every worker, /stats over every worker's window, restart pacing."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from modelfleet_runtime.metrics import LatencyWindow, summarize
from modelfleet_runtime.pod import PodFolder, WorkerStatus, pod_readiness
from modelfleet_runtime.settings import Settings, load_settings, settings_environ
from modelfleet_runtime.supervisor import Listeners, restart_delay, worker_threads


def status(worker: int, state: str, reason: str = "") -> WorkerStatus:
    return WorkerStatus(worker, 100 + worker, state, reason or state)


def test_the_pod_is_ready_only_when_every_worker_is() -> None:
    assert pod_readiness([status(0, "ready"), status(1, "ready")], stopping=False).ready
    loading = pod_readiness([status(0, "ready"), status(1, "loading", "loading the model")], stopping=False)
    assert not loading.ready and loading.state == "loading"
    assert loading.reason == "worker 1 of 2: loading the model"


def test_the_most_telling_worker_names_the_pods_state() -> None:
    workers = [status(0, "loading"), status(1, "restarting", "the worker exited with code -9; restarting")]
    assert pod_readiness(workers, stopping=False).state == "restarting"
    workers.append(status(2, "failed", "sha256 mismatch"))
    assert pod_readiness(workers, stopping=False).reason == "worker 2 of 3: sha256 mismatch"


def test_a_stopping_pod_is_not_ready_even_with_every_worker_ready() -> None:
    result = pod_readiness([status(0, "ready"), status(1, "ready")], stopping=True)
    assert (result.ready, result.state) == (False, "draining")


def test_a_slot_whose_worker_has_not_reported_is_starting(tmp_path: Path) -> None:
    folder = PodFolder(tmp_path)
    folder.create()
    folder.write_worker(0, 41, "ready", "model loaded and warmed up")
    folder.write_worker(1, 17, "ready", "model loaded and warmed up")  # left by the worker before a restart
    supervisor = {"slots": [{"pid": 41, "restarts": 0}, {"pid": 42, "restarts": 1}, {"pid": None, "exit": "gone"}]}
    states = [(s.state, s.restarts) for s in folder.statuses(supervisor)]
    assert states == [("ready", 0), ("starting", 1), ("restarting", 0)]


def test_stats_sum_the_counts_and_take_percentiles_over_every_workers_window(tmp_path: Path) -> None:
    fast, slow = LatencyWindow(100, tmp_path / "w0.bin"), LatencyWindow(100, tmp_path / "w1.bin")
    for _ in range(90):
        fast.record_request(1.0, error=False)
    for _ in range(10):
        slow.record_request(100.0, error=False)
    slow.record_request(5.0, error=True)
    fast.record_batch(30)
    slow.record_batch(10)
    # What another worker reads: the files, not the writers' objects.
    readers = [LatencyWindow(100, tmp_path / name, readonly=True) for name in ("w0.bin", "w1.bin")]
    summary = summarize(readers)
    assert (summary["count"], summary["errors"], summary["batches"]) == (101, 1, 2)
    assert summary["mean_batch_size"] == 20.0
    assert summary["latency_ms"]["p50"] == 1.0 and summary["latency_ms"]["max"] == 100.0
    assert summary["latency_window"] == 100


def test_a_window_keeps_the_most_recent_latencies_and_survives_a_reopen(tmp_path: Path) -> None:
    window = LatencyWindow(4, tmp_path / "w.bin")
    for value in range(10):
        window.record_request(float(value), error=False)
    assert sorted(window.recent().tolist()) == [6.0, 7.0, 8.0, 9.0]
    again = LatencyWindow(4, tmp_path / "w.bin")  # a restarted worker goes on from the file
    again.record_request(10.0, error=False)
    assert again.count(LatencyWindow.COUNT) == 11
    assert np.isin(10.0, again.recent())


def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly() -> None:
    assert [restart_delay(n) for n in range(8)] == [0, 0, 1, 2, 4, 8, 16, 30]


def test_worker_threads_share_out_the_cpus_unless_configured() -> None:
    assert worker_threads(0, cpus=8, workers=2) == 4
    assert worker_threads(0, cpus=2, workers=4) == 1
    assert worker_threads(3, cpus=2, workers=2) == 3


def test_a_worker_reads_back_exactly_the_supervisors_settings() -> None:
    settings = Settings(
        model="file:///m.onnx", workers=4, max_latency_ms=2.5, demo=True, feature_fields=("a", "b"), port=9000
    )
    assert load_settings({}, settings_environ(settings)) == settings


def test_each_worker_gets_a_socket_of_its_own_on_the_port() -> None:
    listeners = Listeners.bind("127.0.0.1", 0)
    try:
        first, second = listeners.get(0), listeners.get(1)
        assert first is not second and first.getsockname() == second.getsockname()
        listeners.release(1)  # a worker restarting after a delay: its socket leaves the group
        assert listeners.get(1).getsockname() == first.getsockname()
    finally:
        listeners.close()


def test_an_inherited_socket_gets_siblings_only_when_it_allows_them() -> None:
    reusable = Listeners.inherited(socket.create_server(("127.0.0.1", 0), reuse_port=True))
    plain = Listeners.inherited(socket.create_server(("127.0.0.1", 0)))
    try:
        assert reusable.get(0) is not reusable.get(1)
        assert reusable.get(0).getsockname() == reusable.get(1).getsockname()
        assert plain.get(0) is plain.get(1)  # shared by every worker
    finally:
        reusable.close()
        plain.close()
