"""recording.max_queue_mb: one cap on the JPEG bytes queued for the disk by all streams.

Where the writers are held back with ``Recorder.writing`` (cleared before the
recorder starts, so no writer takes a frame until the test sets it), what is queued,
and therefore what is dropped, follows from the order of publishing alone.
"""

import asyncio
import threading
import time

import pytest

from helpers import make_jpeg
from recording_tools import run_recorder, sidecars
from robogpt_video.config import ConfigError, load_settings
from robogpt_video.jpeg import inspect_jpeg
from robogpt_video.recording import recorder as recorder_module
from robogpt_video.recording.recorder import Recorder

MIB = 1024 * 1024


async def _until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _run(tmp_path, body, hold=True, **settings):
    run_recorder(tmp_path, body, hold=hold, **settings)


def _queued(recorder):
    rows = recorder.stats().values()
    return sum(r["queue_bytes"] for r in rows), sum(r["queue_frames"] for r in rows)


def test_the_cap_drops_the_oldest_frames_of_any_stream_and_counts_them(tmp_path):
    jpeg = make_jpeg(160, 120, seed=1)
    size = len(jpeg)
    cap_frames = 12  # the cap holds 12.5 frames
    streams, rounds = 8, 10
    totals = {}

    async def body(recorder, registry):
        assert recorder.max_queue_bytes == int(cap_frames * size + size / 2)
        cams = [registry.get_or_create(f"cam{i}") for i in range(streams)]
        highest = 0
        for _ in range(rounds):
            for cam in cams:  # round-robin: frame k of every stream before frame k+1
                cam.publish(jpeg, inspect_jpeg(jpeg))
                assert recorder.queue_bytes <= recorder.max_queue_bytes
                assert _queued(recorder) == (recorder.queue_bytes, recorder.queue_bytes // size)
                highest = max(highest, recorder.queue_bytes)
        assert highest == cap_frames * size
        # What is left are the 12 newest frames: round 10 of every stream and round 9
        # of cam4-cam7. (Dropping each stream's own oldest would have kept others.)
        stats = recorder.stats()
        assert [stats[c.name]["queue_frames"] for c in cams] == [1] * 4 + [2] * 4
        assert [stats[c.name]["frames_dropped"] for c in cams] == [9] * 4 + [8] * 4
        assert all(stats[c.name]["frames_written"] == 0 for c in cams)

        recorder.writing.set()
        await _until(lambda: sum(s["frames_written"] for s in recorder.stats().values())
                     == cap_frames)
        await _until(lambda: recorder.queue_bytes == 0)
        assert _queued(recorder) == (0, 0)
        totals.update({n: s["frames_dropped"] for n, s in recorder.stats().items()})

    _run(tmp_path, body, fps=1000, queue_frames=1000,
         max_queue_mb=(cap_frames * size + size / 2) / MIB)
    assert sum(totals.values()) == streams * rounds - cap_frames
    for i in range(streams):
        [meta] = sidecars(tmp_path, f"cam{i}")
        assert meta["status"] == "complete"
        assert (meta["total_frames"], meta["frames_dropped"]) == ((1, 9) if i < 4 else (2, 8))


def test_a_frame_larger_than_the_cap_is_dropped_and_the_queue_empties(tmp_path):
    small, big = make_jpeg(64, 48, seed=2), make_jpeg(640, 480, seed=3, quality=95)
    assert len(big) > 4 * len(small)

    async def body(recorder, registry):
        cam, other = registry.get_or_create("cam"), registry.get_or_create("other")
        other.publish(small, inspect_jpeg(small))
        cam.publish(big, inspect_jpeg(big))  # larger than the cap: everything goes
        assert recorder.queue_bytes == 0
        assert recorder.stats()["cam"]["frames_dropped"] == 1
        assert recorder.stats()["other"]["frames_dropped"] == 1
        cam.publish(small, inspect_jpeg(small))
        assert recorder.queue_bytes == len(small)
        recorder.writing.set()
        await _until(lambda: recorder.stats()["cam"]["frames_written"] == 1)
        assert recorder.queue_bytes == 0

    _run(tmp_path, body, fps=1000, max_queue_mb=2 * len(small) / MIB)


def test_written_frames_leave_the_books_even_behind_a_stuck_stream(tmp_path, monkeypatch):
    """One stream's write hangs (its file froze) while the second passthrough writer
    keeps writing the others: the arrival list behind the stuck frame stays bounded,
    and once the write returns every queued frame is written."""
    monkeypatch.setattr(recorder_module, "_COMPACT_MIN", 64)
    jpeg = make_jpeg(160, 120, seed=4)
    frozen = threading.Event()
    entered = threading.Event()

    async def body(recorder, registry):
        write = recorder._write

        def stuck_write(track, frame):
            if track.name == "stuck":
                entered.set()
                frozen.wait(30)
            write(track, frame)

        recorder._write = stuck_write
        try:
            await stuck_then_others(recorder, registry)
        finally:
            frozen.set()

    async def stuck_then_others(recorder, registry):
        stuck = registry.get_or_create("stuck")
        fast = [registry.get_or_create(f"fast{i}") for i in range(4)]
        stuck.publish(jpeg, inspect_jpeg(jpeg))
        await _until(entered.is_set)  # a writer holds the first frame
        stuck.publish(jpeg, inspect_jpeg(jpeg))  # queued behind it, first in arrivals
        longest = 0
        for k in range(1, 101):
            for cam in fast:
                cam.publish(jpeg, inspect_jpeg(jpeg))
            longest = max(longest, len(recorder._arrivals))
            await _until(lambda: all(  # the other writer keeps up
                recorder.stats()[c.name]["frames_written"] == k for c in fast))
        assert recorder.stats()["stuck"]["queue_frames"] == 1
        assert recorder.queue_bytes == len(jpeg)
        assert longest <= 64 + 1 + len(fast)  # 401 frames went through
        frozen.set()
        await _until(lambda: recorder.stats()["stuck"]["frames_written"] == 2)
        assert recorder.queue_bytes == 0
        assert all(s["frames_dropped"] == 0 for s in recorder.stats().values())

    _run(tmp_path, body, hold=False, fps=1000, queue_frames=1000)


def test_max_queue_mb_is_read_from_the_environment_and_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBOGPT_CONFIG", raising=False)
    assert load_settings().recording.max_queue_mb == 256
    monkeypatch.setenv("ROBOGPT_RECORDING__MAX_QUEUE_MB", "0.5")
    settings = load_settings().recording
    assert settings.max_queue_mb == 0.5
    assert Recorder(settings.model_copy(update={"directory": tmp_path})).max_queue_bytes == MIB // 2
    monkeypatch.setenv("ROBOGPT_RECORDING__MAX_QUEUE_MB", "0")
    with pytest.raises(ConfigError, match="recording.max_queue_mb"):
        load_settings()


def test_the_frame_budget_leaves_the_queues_what_latest_frames_and_uploads_do_not_hold(
    tmp_path
):
    jpeg = make_jpeg(160, 120, seed=5)
    size = len(jpeg)

    async def body(recorder, registry):
        memory = recorder.memory
        assert memory.budget == int(10.5 * size)
        cams = [registry.get_or_create(f"cam{i}") for i in range(4)]
        for _ in range(10):
            for cam in cams:
                cam.publish(jpeg, inspect_jpeg(jpeg))
                assert memory.held() <= memory.budget
        # 4 latest frames leave 6.5 frames of room: the 6 newest stay queued (4 of them
        # are also their stream's latest frame: counted twice), 34 dropped and counted.
        assert memory.latest == 4 * size and recorder.held_bytes == 6 * size
        assert sum(s["frames_dropped"] for s in recorder.stats().values()) == 34
        [problem] = [p for p in recorder.problems() if "max_frame_memory_mb" in p]
        assert problem.startswith("recording: 34 frame(s) dropped from the disk queue")
        memory.uploads = 3 * size  # bodies being read take their share too
        cams[0].publish(jpeg, inspect_jpeg(jpeg))
        assert recorder.held_bytes == 3 * size
        memory.uploads = 0
        recorder.writing.set()
        await _until(lambda: recorder.held_bytes == 0)
        assert sum(s["frames_written"] for s in recorder.stats().values()) == 3
        for cam in cams:
            registry.remove(cam.name, "test over")
        assert memory.latest == 0 and memory.held() == 0

    _run(tmp_path, body, fps=1000, queue_frames=1000, frame_memory_mb=10.5 * size / MIB)


def test_max_frame_memory_mb_is_read_from_the_environment_and_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROBOGPT_CONFIG", raising=False)
    assert load_settings().server.max_frame_memory_mb == 512
    monkeypatch.setenv("ROBOGPT_SERVER__MAX_FRAME_MEMORY_MB", "64")
    assert load_settings().server.max_frame_memory_mb == 64
    monkeypatch.setenv("ROBOGPT_SERVER__MAX_FRAME_MEMORY_MB", "0")
    with pytest.raises(ConfigError, match="server.max_frame_memory_mb"):
        load_settings()
