"""Feedback across real runtime processes sharing one volume: kill -9, two pods, restarts, memory."""

from __future__ import annotations

import asyncio
import collections
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelfleet_runtime.feedback import FeedbackVolume, Layout
from modelfleet_runtime.prediction_log import iter_predictions, parse_request_id
from modelfleet_runtime.segments import OPEN_SUFFIX
from modelfleet_runtime.training.join import join
from tests.support.onnx_models import build_mlp
from tests.support.processes import ChildProcess
from tests.support.runtime_process import RUNTIME, RuntimeProcess, listening_socket


def runtime_env(model: Path, volume: Path, pod: str, **extra: str) -> dict[str, str]:
    return {
        "HOSTNAME": pod,
        "MODELFLEET_MODEL": str(model),
        "MODELFLEET_NAME": "fraud",
        "MODELFLEET_MODEL_VERSION": "3",
        "MODELFLEET_WARMUP_ITERATIONS": "1",
        "MODELFLEET_FEEDBACK_DIR": str(volume),
        **extra,
    }


async def test_every_acknowledged_label_survives_kill_9_exactly_once_and_the_log_loses_only_its_tail(
    mlp_path: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    listener = listening_socket()
    env = runtime_env(mlp_path, volume, "fraud-3-x1")
    clients, per_client, kill_after = 16, 25, 150
    acked: list[tuple[int, int]] = []
    failed: list[tuple[int, int]] = []
    sent: dict[str, list[float]] = {}  # request_id -> the features of the prediction that answered it
    first = RuntimeProcess(env, tmp_path, listener=listener, name="first")
    second = RuntimeProcess(env, tmp_path, listener=listener, name="second")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    try:
        await first.start()
        await first.wait_ready()
        async with httpx.AsyncClient(base_url=first.url, limits=limits, timeout=60) as client:
            killed = asyncio.Event()

            async def step(c: int, s: int) -> bool:
                features = [c, s, 0.5, 0.25]
                prediction = await client.post("/predict", json={"features": features})
                if prediction.status_code != 200:
                    return False
                sent[prediction.json()["request_id"]] = features
                # Odd clients label their prediction by request_id, even ones resend the features.
                body: dict[str, Any] = {"label": c * 1000 + s}
                body |= {"request_id": prediction.json()["request_id"]} if c % 2 else {"features": features}
                return (await client.post("/feedback", json=body)).status_code == 200

            async def send(c: int) -> None:
                for s in range(per_client):
                    try:
                        ok = await step(c, s)
                    except httpx.HTTPError:
                        ok = False
                    (acked if ok else failed).append((c, s))
                    if ok and len(acked) == kill_after:
                        first.kill()  # SIGKILL while the other clients' requests are in flight
                        killed.set()

            senders = [asyncio.create_task(send(c)) for c in range(clients)]
            await killed.wait()
            await first.wait()
            # A torn record, as if the write of a group had been cut short.
            [open_segment] = [p for p in Layout(volume).labels.iterdir() if p.name.endswith(OPEN_SUFFIX)]
            with open(open_segment, "ab") as f:
                f.write(b"MFL1\x90\x00\x00\x00torn")
            # Requests sent meanwhile wait in the listening socket's backlog for the restarted server.
            await second.start()
            await asyncio.gather(*senders)
            stats = (await client.get("/v1/feedback/stats")).json()
    finally:
        await first.stop()
        await second.stop()
        listener.close()

    assert len(acked) + len(failed) == clients * per_client
    assert len(acked) > kill_after
    fv = FeedbackVolume(volume)
    joined = join(fv, fv.read_manifest())
    counts = collections.Counter(int(r.sample.label) for r in joined.records)
    assert all(counts[c * 1000 + s] == 1 for c, s in acked), "an acknowledged label is missing or duplicated"
    assert max(counts.values()) == 1
    assert set(counts) <= {c * 1000 + s for c, s in acked + failed}
    # A label by request_id trains on exactly the features its prediction was made from.
    assert all(r.sample.features == [r.sample.label // 1000, r.sample.label % 1000, 0.5, 0.25] for r in joined.records)
    assert stats["corrupt_records"] == 0
    assert FeedbackVolume(volume).stats().open_segments == 0
    # The prediction log: every logged prediction is one that was answered, with what was sent, and
    # each process's log is a prefix of what it answered (a crash loses only the tail).
    logged = list(iter_predictions(Layout(volume).predictions))
    assert len({p.request_id for p in logged}) == len(logged)
    assert all(p.inputs["x"][0].tolist() == sent[p.request_id] for p in logged)
    by_writer = collections.defaultdict(list)
    for p in logged:
        writer, seq = parse_request_id(p.request_id)  # type: ignore[misc]
        by_writer[writer].append(seq)
    assert len(by_writer) == 2
    for seqs in by_writer.values():
        assert seqs == list(range(1, len(seqs) + 1))
    survivor = max(by_writer, key=lambda w: len(by_writer[w]))
    answered_by_survivor = [i for i in sent if i.startswith(survivor)]
    assert len(by_writer[survivor]) == len(answered_by_survivor)  # stopped with SIGTERM: nothing lost


async def test_two_pods_on_one_volume_join_every_label_sent_to_the_other_across_restarts(tmp_path: Path) -> None:
    model = build_mlp(tmp_path / "m.onnx", (4, 8, 1))
    volume = tmp_path / "volume"
    listeners = [listening_socket(), listening_socket()]
    pods = [
        RuntimeProcess(runtime_env(model, volume, f"fraud-3-{n}"), tmp_path, listener=listeners[n], name=f"pod-{n}")
        for n in range(2)
    ]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).round(3)
    ids: list[str] = []
    try:
        for pod in pods:
            await pod.start()
        for pod in pods:
            await pod.wait_ready()
        for i, row in enumerate(x):
            answer = await pods[i % 2].client.post("/predict", json={"features": row.tolist()})
            assert answer.status_code == 200
            ids.append(answer.json()["request_id"])

        async def label(i: int) -> httpx.Response:
            # Every label goes to the pod that did not answer the prediction.
            return await pods[(i + 1) % 2].client.post("/feedback", json={"request_id": ids[i], "label": float(i)})

        assert {(await label(i)).status_code for i in range(250)} == {200}
        for n, pod in enumerate(pods):  # both pods restart (a rollout): nothing in flight is lost
            assert await pod.stop() == 0
            pods[n] = RuntimeProcess(pod.child.env, tmp_path, listener=listeners[n], name=f"pod-{n}-again")
            await pods[n].start()
        for pod in pods:
            await pod.wait_ready()
        assert {(await label(i)).status_code for i in range(250, 500)} == {200}
        again = await pods[0].client.post("/feedback", json={"request_id": ids[3], "label": 1.0})
        assert again.status_code == 409  # labelled through the other pod before the restart
        stats = [(await pod.client.get("/v1/feedback/stats")).json() for pod in pods]
    finally:
        for pod in pods:
            await pod.stop()
        for listener in listeners:
            listener.close()

    # Both pods count the whole volume: the same numbers, to be read from one (never summed).
    assert stats[0]["unconsumed"] == stats[1]["unconsumed"] == 500
    assert stats[0]["matched"] == 500 and stats[0]["writer"] != stats[1]["writer"]
    # Each label joins the features of its own prediction, whichever pod answered it.
    fv = FeedbackVolume(volume)
    joined = sorted(join(fv, fv.read_manifest()).records, key=lambda r: r.sample.label)
    assert [r.sample.features for r in joined] == x.astype(np.float32).tolist()
    args = ["--base-model", str(model), "--samples", str(volume), "--output", str(tmp_path / "out")]
    args += ["--termination-log", str(tmp_path / "termination"), "--epochs", "2"]
    trainer = ChildProcess([RUNTIME, "train", *args], dict(os.environ), tmp_path / "train.log")
    await trainer.start()
    assert await trainer.wait() == 0, trainer.log_tail()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["samples"]["labels"]["matched"] == 500 and metrics["samples"]["used"] == 500
    report = json.loads((tmp_path / "termination").read_text())
    assert report["labels"] == {"matched": 500, "unmatched": 0, "expired": 0, "pending": 0}
    assert FeedbackVolume(volume).count_unconsumed() == 0


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_memory_of_a_pod_stays_flat_over_5000_large_predictions_with_feedback_on(tmp_path: Path) -> None:
    model = build_mlp(tmp_path / "wide.onnx", (256, 16, 1))
    buffer = 16 * 1024 * 1024
    env = runtime_env(
        model,
        tmp_path / "volume",
        "fraud-3-x1",
        MODELFLEET_PREDICTION_LOG_BUFFER_BYTES=str(buffer),
        MODELFLEET_MAX_BATCH_SIZE="64",
    )
    rows = [[(i + j) % 7 for j in range(256)] for i in range(64)]  # 64 KiB of float32 per prediction
    body = json.dumps({"instances": rows}).encode()
    headers = {"content-type": "application/json"}
    samples: dict[int, int] = {}
    async with RuntimeProcess(env, tmp_path) as pod:
        pid = pod.child.pid
        done = 0

        async def client() -> None:
            nonlocal done
            while done < 5000:
                done += 1
                n = done
                answer = await pod.client.post("/predict", content=body, headers=headers)
                assert answer.status_code == 200 and "request_id" in answer.json()
                if n in (500, 5000):
                    samples[n] = _rss_bytes(pid)

        await asyncio.gather(*(client() for _ in range(8)))
        logged = (await pod.client.get("/metrics")).text
    # The old in-memory cache kept every input for 300 s: 4,500 x 64 KiB = 281 MiB more at the end.
    # The log holds at most its write buffer in memory.
    growth = samples[5000] - samples[500]
    assert growth < buffer + 32 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert "modelfleet_prediction_log_records_total" in logged
    assert len(list(iter_predictions(Layout(tmp_path / "volume").predictions))) >= 5000
