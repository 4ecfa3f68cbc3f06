"""The label log on its own: durable appends, claims, torn records, rotation, counting and consumption."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet_runtime import claims
from modelfleet_runtime.feedback import (
    ConsumptionConflict,
    FeedbackVolume,
    Label,
    LabelWriter,
    Layout,
    decode_label,
    encode_label,
)
from modelfleet_runtime.prediction_log import PredictionIndex, PredictionLog, request_id
from modelfleet_runtime.segments import OPEN_SUFFIX, SEALED_SUFFIX, new_writer_id
from tests.support.polling import wait_for

PREDICTOR = "00000000000000aa"


def sample(i: int, label: float = 1.0) -> Label:
    return Label(1700000000.0 + i, (label,), None, np.array([i, 0.5, -1.25], np.float32))


def by_id(seq: int, label: float = 1.0, writer: str = PREDICTOR) -> Label:
    return Label(1700000000.0 + seq, (label,), request_id(writer, seq))


def writer_for(root: Path, pod: str = "pod-a", **kw: object) -> LabelWriter:
    return LabelWriter(Layout(root), pod=pod, writer=new_writer_id(), model="m", model_version="1", **kw)  # type: ignore[arg-type]


def ids(volume: FeedbackVolume) -> list[int]:
    return [int(r.label.features[0]) for r in volume.iter_unconsumed() if r.label.features is not None]


def segment_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "labels").iterdir() if p.name.endswith(SEALED_SUFFIX))


def test_a_sample_is_stored_in_the_models_dtype_not_as_float64_text() -> None:
    rows = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    stored = sum(len(encode_label(Label(0.0, (1,), None, row))) for row in rows)
    as_text = len(orjson.dumps({"instances": rows.astype(np.float64).tolist(), "labels": [1] * 1000}))
    assert stored < as_text / 2.5
    decoded = decode_label(encode_label(Label(3.0, ([0.0, 1.0],), None, rows[0])))
    assert decoded is not None and decoded.features is not None
    assert decoded.features.dtype == np.float32 and np.array_equal(decoded.features, rows[0])
    assert decoded.labels == ([0.0, 1.0],) and decoded.ts == 3.0


async def test_appended_labels_are_read_back_in_order_after_the_writer_closes(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    assert await writer.append([sample(0), sample(1)]) == [True, True]
    await writer.append([sample(2)])
    volume = FeedbackVolume(tmp_path)
    # Readable while the segment is still open...
    assert ids(volume) == [0, 1, 2]
    assert volume.stats().open_segments == 1
    await writer.close()
    # ...and after it is sealed.
    assert [p.name.endswith(OPEN_SUFFIX) for p in segment_files(tmp_path)] == [False]
    assert ids(volume) == [0, 1, 2]
    assert volume.count_unconsumed() == 3
    assert {r.model_version for r in volume.iter_unconsumed()} == {"1"}


async def test_concurrent_appends_share_one_write_and_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    entered, release = threading.Event(), threading.Event()
    real_sync = getattr(os, "fdatasync", os.fsync)

    def slow_sync(fd: int) -> None:
        syncs.append(fd)
        entered.set()
        release.wait(10)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync, raising=False)
    writer = writer_for(tmp_path)
    first = asyncio.create_task(writer.append([sample(0)]))
    assert await asyncio.to_thread(entered.wait, 10)
    # While the first group is in fsync, twenty more appends arrive: they form the next group.
    rest = [asyncio.create_task(writer.append([sample(i)])) for i in range(1, 21)]
    await wait_for(lambda: writer.waiting == 20, timeout=30)
    assert not any(t.done() for t in rest)
    release.set()
    await asyncio.gather(first, *rest)
    assert len(syncs) == 2
    assert sorted(ids(FeedbackVolume(tmp_path))) == list(range(21))


async def test_a_torn_last_record_is_skipped_and_the_labels_before_it_are_kept(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    await writer.append([sample(i) for i in range(5)])
    await writer.close()
    [segment] = segment_files(tmp_path)
    size = segment.stat().st_size
    last = len(encode_label(sample(4))) + 12
    for cut in (1, last // 2, last - 1):
        os.truncate(segment, size - cut)
        volume = FeedbackVolume(tmp_path)
        assert ids(volume) == [0, 1, 2, 3]
        assert volume.count_unconsumed() == 4
        assert volume.stats().corrupt_records == 0


async def test_a_corrupted_record_is_skipped_in_a_sealed_segment_but_stops_reading_in_an_open_one(
    tmp_path: Path,
) -> None:
    writer = writer_for(tmp_path)
    await writer.append([sample(i) for i in range(3)])
    [segment] = [p for p in (tmp_path / "labels").iterdir() if p.name.endswith(OPEN_SUFFIX)]
    data = bytearray(segment.read_bytes())
    record = len(encode_label(sample(0))) + 12
    second = len(data) - 2 * record
    # Zeros where the second record was: what an unsynced page may read as on a network filesystem.
    data[second : second + record] = bytes(record)
    segment.write_bytes(bytes(data))
    volume = FeedbackVolume(tmp_path)
    assert ids(volume) == [0]  # open: the writer may still be completing those bytes
    assert volume.count_unconsumed() == 1
    await writer.close()
    assert ids(volume) == [0, 2]  # sealed: nobody will complete them
    stats = volume.stats()
    assert (stats.unconsumed, stats.corrupt_records) == (2, 1)


async def test_segments_rotate_at_the_configured_size(tmp_path: Path) -> None:
    record = len(encode_label(sample(0))) + 12
    writer = writer_for(tmp_path, segment_bytes=record * 3 + 200)
    for i in range(10):
        await writer.append([sample(i)])
    files = sorted((tmp_path / "labels").iterdir())
    assert len(files) == 4
    assert [f.name.endswith(OPEN_SUFFIX) for f in files] == [False, False, False, True]
    assert all(f.stat().st_size <= record * 3 + 200 for f in files)
    assert ids(FeedbackVolume(tmp_path)) == list(range(10))


async def test_a_segment_left_open_by_a_dead_writer_is_sealed_by_the_next_one(tmp_path: Path) -> None:
    dead = writer_for(tmp_path)
    await dead.append([sample(0)])
    # The process dies: its descriptor (and with it the lock) goes away without sealing.
    os.close(dead._appender._fd)  # type: ignore[arg-type]
    assert FeedbackVolume(tmp_path).stats().open_segments == 1
    successor = writer_for(tmp_path)
    await successor.append([sample(1)])
    names = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert sum(n.endswith(OPEN_SUFFIX) for n in names) == 1
    assert any(n.startswith(f"pod-a_{dead.writer}") and not n.endswith(OPEN_SUFFIX) for n in names)
    assert sorted(ids(FeedbackVolume(tmp_path))) == [0, 1]
    await successor.close()


async def test_commit_consumes_exactly_what_was_read_and_later_labels_stay_unconsumed(tmp_path: Path) -> None:
    a, b = writer_for(tmp_path, "pod-a"), writer_for(tmp_path, "pod-b")
    await a.append([sample(i) for i in range(3)])
    await b.append([sample(i) for i in range(10, 14)])
    volume = FeedbackVolume(tmp_path)
    manifest = volume.read_manifest()
    records = list(volume.iter_unconsumed(manifest))
    assert volume.count_unconsumed() == 7
    # Labels appended while the trainer works belong to the next run.
    await a.append([sample(3)])
    volume.commit(FeedbackVolume.positions(records), expected=manifest)
    assert ids(volume) == [3]
    assert volume.count_unconsumed() == 1
    await a.close()
    await b.close()
    # Sealed and fully consumed: archived; the rest stays.
    volume.commit(FeedbackVolume.positions(list(volume.iter_unconsumed())))
    assert volume.count_unconsumed() == 0
    assert len(list(Layout(tmp_path).consumed.iterdir())) == 2
    assert segment_files(tmp_path) == []
    await a.append([sample(4)])  # a reopened writer continues in a fresh segment
    assert ids(volume) == [4]


async def test_a_pending_label_is_read_again_by_the_next_run_and_the_rest_is_not(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    await writer.append([sample(0), by_id(1), sample(2)])
    volume = FeedbackVolume(tmp_path)
    manifest = volume.read_manifest()
    records = list(volume.iter_unconsumed(manifest))
    pending = {records[1].segment: [records[1].offset]}
    volume.commit(FeedbackVolume.positions(records), pending=pending, expected=manifest)
    again = list(volume.iter_unconsumed())
    assert [r.label.request_id for r in again] == [request_id(PREDICTOR, 1)]
    volume.commit(FeedbackVolume.positions(again))
    assert list(volume.iter_unconsumed()) == []
    await writer.close()


async def test_a_second_run_that_read_the_same_labels_cannot_commit_them_again(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    await writer.append([sample(i) for i in range(4)])
    volume = FeedbackVolume(tmp_path)
    manifest = volume.read_manifest()
    first = list(volume.iter_unconsumed(manifest))
    second = list(volume.iter_unconsumed(manifest))
    volume.commit(FeedbackVolume.positions(first), expected=manifest)
    with pytest.raises(ConsumptionConflict):
        volume.commit(FeedbackVolume.positions(second), expected=manifest)
    assert volume.count_unconsumed() == 0
    await writer.close()


async def test_a_failed_write_is_reported_and_the_next_append_uses_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_for(tmp_path)
    await writer.append([sample(0)])
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data)[:7])  # a partial record reaches the file, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        await writer.append([sample(1)])
    await writer.append([sample(2)])
    assert sorted(ids(FeedbackVolume(tmp_path))) == [0, 2]
    assert len(list((tmp_path / "labels").iterdir())) == 2
    await writer.close()


async def test_of_two_writers_labelling_one_request_id_exactly_one_keeps_it(tmp_path: Path) -> None:
    predictions = PredictionLog(Layout(tmp_path).predictions, pod="p", writer=PREDICTOR, model="m", model_version="1")
    predictions.start()
    for _ in range(3):
        predictions.record({"x": np.zeros((1, 3), np.float32)}, {"y": np.zeros((1, 1), np.float32)})
    predictions.close()
    a, b = writer_for(tmp_path, "pod-a"), writer_for(tmp_path, "pod-b")
    results = await asyncio.gather(*(w.append([by_id(seq, float(i))]) for seq in (1, 2) for i, w in enumerate((a, b))))
    for seq in (1, 2):
        assert sorted(r[0] for r in results[2 * (seq - 1) : 2 * seq]) == [False, True]
    assert await a.append([by_id(3)]) == [True]
    assert await b.append([by_id(3)]) == [False]
    volume = FeedbackVolume(tmp_path, index=PredictionIndex(Layout(tmp_path).predictions))
    stats = volume.stats()
    assert (stats.matched, stats.duplicates, stats.unconsumed) == (3, 3, 3)
    assert len(list(volume.iter_unconsumed())) == 6  # every record is on disk; only the claimed ones count
    await a.close()
    await b.close()


def _claim_many(root: str, record: str, count: int, start: Any, results: Any) -> None:
    start.wait(30)
    results.put((record, [seq for seq in range(1, count + 1) if claims.claim(Path(root), PREDICTOR, seq, record)]))


def test_processes_racing_for_the_same_ids_each_id_goes_to_exactly_one(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_claim_many, args=(str(tmp_path), f"seg-{p}@0", 300, start, results)) for p in range(4)
    ]
    for w in workers:
        w.start()
    start.set()
    won = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(30)
    assert sum(len(seqs) for seqs in won.values()) == 300
    assert set().union(*map(set, won.values())) == set(range(1, 301))
    for record, seqs in won.items():
        assert all(claims.holder(tmp_path, PREDICTOR, seq) == record for seq in seqs)
