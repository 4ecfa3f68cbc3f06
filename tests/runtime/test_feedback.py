"""The feedback log on its own: durable appends, torn lines, rotation, counting and consumption."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from modelfleet_runtime import feedback
from modelfleet_runtime.feedback import (
    CONSUMED_DIR,
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    ConsumptionConflict,
    FeedbackVolume,
    FeedbackWriter,
    Sample,
    decode_line,
    encode_line,
)
from tests.support.polling import wait_for


def sample(i: int, label: float = 1.0) -> Sample:
    return Sample([float(i), 0.5, -1.25], label, 1700000000.0 + i, "1")


def ids(volume: FeedbackVolume) -> list[int]:
    return [int(r.sample.features[0]) for r in volume.iter_unconsumed()]


def segment_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".jsonl"))


def test_a_line_is_plain_json_and_its_checksum_catches_any_change() -> None:
    line = encode_line(Sample([1.0, 2.5], [0.0, 1.0], 12.0, "3"))
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert decode_line(line) == Sample([1.0, 2.5], [0.0, 1.0], 12.0, "3")
    # A reader that ignores the checksum still gets the sample.
    import json

    assert json.loads(line)["features"] == [1.0, 2.5]
    flipped = line.replace(b"2.5", b"2.6")
    assert decode_line(flipped) is None
    assert decode_line(line[:-5] + b"\n") is None


async def test_appended_samples_are_read_back_in_order_after_the_writer_closes(tmp_path: Path) -> None:
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    await writer.append([sample(0), sample(1)])
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
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    first = asyncio.create_task(writer.append([sample(0)]))
    assert await asyncio.to_thread(entered.wait, 10)
    # While the first group is in fsync, twenty more appends arrive: they form the next group.
    rest = [asyncio.create_task(writer.append([sample(i)])) for i in range(1, 21)]
    await wait_for(lambda: writer.waiting == 20)
    assert not any(t.done() for t in rest)
    release.set()
    await asyncio.gather(first, *rest)
    assert len(syncs) == 2
    assert sorted(ids(FeedbackVolume(tmp_path))) == list(range(21))


async def test_a_torn_last_line_is_skipped_and_the_samples_before_it_are_kept(tmp_path: Path) -> None:
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    await writer.append([sample(i) for i in range(5)])
    await writer.close()
    [segment] = segment_files(tmp_path)
    size = segment.stat().st_size
    last = len(encode_line(sample(4)))
    for cut in (1, last // 2, last - 1):
        os.truncate(segment, size - cut)
        volume = FeedbackVolume(tmp_path)
        assert ids(volume) == [0, 1, 2, 3]
        assert volume.count_unconsumed() == 4


async def test_a_corrupted_line_is_skipped_in_a_sealed_segment_but_stops_reading_in_an_open_one(tmp_path: Path) -> None:
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    await writer.append([sample(i) for i in range(3)])
    [segment] = segment_files(tmp_path)
    data = segment.read_bytes()
    second = data.index(b"\n") + 1
    # Zeros where the second line was: what an unsynced page may read as on a network filesystem.
    broken = data[:second] + b"\0" * (data.index(b"\n", second) - second) + data[data.index(b"\n", second) :]
    segment.write_bytes(broken)
    volume = FeedbackVolume(tmp_path)
    assert ids(volume) == [0]  # open: the writer may still be completing those bytes
    assert volume.count_unconsumed() == 1
    await writer.close()
    assert ids(volume) == [0, 2]  # sealed: nobody will complete them
    stats = volume.stats()
    assert (stats.unconsumed, stats.corrupt_records) == (2, 1)


async def test_segments_rotate_at_the_configured_size(tmp_path: Path) -> None:
    line = len(encode_line(sample(0)))
    writer = FeedbackWriter(tmp_path, pod="pod-a", segment_bytes=line * 3)
    for i in range(10):
        await writer.append([sample(i)])
    files = segment_files(tmp_path)
    assert len(files) == 4
    assert [f.name.endswith(OPEN_SUFFIX) for f in files] == [False, False, False, True]
    assert all(f.stat().st_size <= line * 3 for f in files)
    assert ids(FeedbackVolume(tmp_path)) == list(range(10))


async def test_a_segment_left_open_by_a_dead_writer_is_sealed_by_the_next_one(tmp_path: Path) -> None:
    dead = FeedbackWriter(tmp_path, pod="pod-a")
    await dead.append([sample(0)])
    # The process dies: its descriptor (and with it the lock) goes away without sealing.
    os.close(dead._fd)
    assert FeedbackVolume(tmp_path).stats().open_segments == 1
    successor = FeedbackWriter(tmp_path, pod="pod-a")
    await successor.append([sample(1)])
    names = [f.name for f in segment_files(tmp_path)]
    assert sum(n.endswith(OPEN_SUFFIX) for n in names) == 1
    assert names[0].startswith(f"pod-a_{dead._start}")
    assert names[0].endswith(SEALED_SUFFIX) and not names[0].endswith(OPEN_SUFFIX)
    assert sorted(ids(FeedbackVolume(tmp_path))) == [0, 1]
    await successor.close()


async def test_a_live_writers_segment_is_never_sealed_by_others(tmp_path: Path) -> None:
    live = FeedbackWriter(tmp_path, pod="pod-a")
    await live.append([sample(0)])
    assert FeedbackVolume(tmp_path).seal_abandoned() == []
    other = FeedbackWriter(tmp_path, pod="pod-b")
    await other.append([sample(1)])
    assert sum(f.name.endswith(OPEN_SUFFIX) for f in segment_files(tmp_path)) == 2
    await live.close()
    await other.close()


async def test_commit_consumes_exactly_what_was_read_and_later_samples_stay_unconsumed(tmp_path: Path) -> None:
    a, b = FeedbackWriter(tmp_path, pod="pod-a"), FeedbackWriter(tmp_path, pod="pod-b")
    await a.append([sample(i) for i in range(3)])
    await b.append([sample(i) for i in range(10, 14)])
    volume = FeedbackVolume(tmp_path)
    offsets = volume.consumed_offsets()
    records = list(volume.iter_unconsumed(offsets))
    assert volume.count_unconsumed() == 7
    # Samples appended while the trainer works belong to the next run.
    await a.append([sample(3)])
    volume.commit(FeedbackVolume.positions(records), expected=offsets)
    assert ids(volume) == [3]
    assert volume.count_unconsumed() == 1
    await a.close()
    await b.close()
    # Sealed and fully consumed: archived; the rest stays.
    volume.commit(FeedbackVolume.positions(list(volume.iter_unconsumed())))
    assert volume.count_unconsumed() == 0
    assert len(list((tmp_path / CONSUMED_DIR).iterdir())) == 2
    assert segment_files(tmp_path) == []
    await a.append([sample(4)])  # a reopened writer continues in a fresh segment
    assert ids(volume) == [4]


async def test_a_second_run_that_read_the_same_samples_cannot_commit_them_again(tmp_path: Path) -> None:
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    await writer.append([sample(i) for i in range(4)])
    volume = FeedbackVolume(tmp_path)
    offsets = volume.consumed_offsets()
    first = list(volume.iter_unconsumed(offsets))
    second = list(volume.iter_unconsumed(offsets))
    volume.commit(FeedbackVolume.positions(first), expected=offsets)
    with pytest.raises(ConsumptionConflict):
        volume.commit(FeedbackVolume.positions(second), expected=offsets)
    assert volume.count_unconsumed() == 0
    await writer.close()


async def test_a_failed_write_is_reported_and_the_next_append_uses_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = FeedbackWriter(tmp_path, pod="pod-a")
    await writer.append([sample(0)])
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data)[:7])  # a partial line reaches the file, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(feedback.os, "write", failing_write)
    with pytest.raises(feedback.FeedbackWriteError):
        await writer.append([sample(1)])
    await writer.append([sample(2)])
    assert sorted(ids(FeedbackVolume(tmp_path))) == [0, 2]
    assert len(segment_files(tmp_path)) == 2
    await writer.close()
