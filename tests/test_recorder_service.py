"""The Recorder service contract, in-process with real streams, threads and files."""

import asyncio
import time
from pathlib import Path

from helpers import make_jpeg
from recording_tools import decode, run_recorder, sidecars
from robogpt_video.jpeg import inspect_jpeg


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _run(tmp_path, body, **settings):
    run_recorder(tmp_path, body, **settings)


async def _publish(stream, seed):
    jpeg = make_jpeg(160, 120, seed=seed)
    stream.publish(jpeg, inspect_jpeg(jpeg))
    await asyncio.sleep(0.005)  # well below recording.fps


def test_pause_closes_segments_and_resume_records_again(tmp_path):
    async def body(recorder, registry):
        cam = registry.get_or_create("cam")
        for i in range(3):
            await _publish(cam, i)
        await _until(lambda: recorder.stats()["cam"]["frames_written"] == 3)
        [open_path] = recorder.open_paths()
        recorder.pause("disk almost full")
        assert recorder.problems() == ["recording paused: disk almost full"]
        await _until(lambda: not recorder.open_paths())
        assert [s["status"] for s in sidecars(tmp_path, "cam")] == ["complete"]
        await _publish(cam, 9)
        assert recorder.stats()["cam"]["frames_dropped"] == 1
        recorder.resume()
        assert recorder.problems() == []
        await _publish(cam, 10)
        await _until(lambda: recorder.stats()["cam"]["frames_written"] == 4)
        assert recorder.open_paths() and recorder.open_paths() != {open_path}

    _run(tmp_path, body, fps=100)
    metas = sidecars(tmp_path, "cam")
    assert [(m["status"], m["total_frames"]) for m in metas] == [("complete", 3), ("complete", 1)]


def test_full_queue_drops_the_oldest_and_counts_it(tmp_path):
    published = [make_jpeg(160, 120, seed=i) for i in range(200)]
    counters = ("frames_written", "frames_dropped", "frames_skipped_fps")

    async def body(recorder, registry):
        cam = registry.get_or_create("cam")
        for jpeg in published:  # faster than any disk write: the event loop never yields
            cam.publish(jpeg, inspect_jpeg(jpeg))
        await _until(lambda: sum(recorder.stats()["cam"][k] for k in counters) == 200)
        stats.update(recorder.stats()["cam"])

    stats = {}

    _run(tmp_path, body, queue_frames=2, fps=1000)
    [meta] = sidecars(tmp_path, "cam")
    got = decode(Path(meta["recording_path"]))
    assert got.frames == meta["total_frames"] == stats["frames_written"]
    assert meta["frames_dropped"] == stats["frames_dropped"] > 0
    order = [published.index(p) for p in got.packets]
    assert order == sorted(set(order))  # what was kept was written once, in order
