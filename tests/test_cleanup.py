"""Cleanup against a real server: idle streams go, old recordings go, open ones stay."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import av
import httpx
import pytest

from helpers import iter_parts, make_jpeg, publish, wait_for
from robogpt_video.cleanup import CleanupService
from robogpt_video.config import load_settings
from robogpt_video.jpeg import inspect_jpeg
from robogpt_video.recording.recorder import Recorder as RealRecorder
from robogpt_video.recording.store import RecordingStore
from robogpt_video.runtime import Runtime
from robogpt_video.streams import StreamRegistry, iso

DAY = 86_400
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def make_recording(
    root: Path, stream: str, ended_days_ago: float, status: str = "complete", frames: int = 3,
    mtime: float | None = None,
) -> Path:
    """A real fragmented MP4 of ``frames`` JPEGs plus its sidecar, dated in the past."""
    end = time.time() - ended_days_ago * DAY
    start = end - 60
    started = datetime.fromtimestamp(start, timezone.utc)
    path = RecordingStore(root).new_segment_path(stream, started)
    with av.open(str(path), "w", format="mp4", options=FRAGMENTED) as out:
        video = out.add_stream("mjpeg")
        video.width, video.height, video.pix_fmt = 64, 48, "yuvj420p"
        video.time_base = Fraction(1, 1000)
        for i in range(frames):
            packet = av.Packet(make_jpeg(64, 48, seed=i))
            packet.stream, packet.pts, packet.dts = video, i * 100, i * 100
            packet.time_base = video.time_base
            out.mux(packet)
    RecordingStore.write_sidecar(
        path,
        {
            "stream_name": stream,
            "start_time": iso(start),
            "end_time": iso(end),
            "duration_seconds": 60,
            "status": status,
            "size": path.stat().st_size,
        },
    )
    stamp = end if mtime is None else mtime
    os.utime(path, (stamp, stamp))
    return path


def size_of(video: Path) -> int:
    return video.stat().st_size + video.with_suffix(".json").stat().st_size


def stream_names(url: str) -> list[str]:
    return [s["name"] for s in httpx.get(f"{url}/api/streams", timeout=5).json()["streams"]]


def far_schedule() -> str:
    """A daily time an hour ago, so the daily sweep does not fire during a test."""
    return (datetime.now() - timedelta(hours=1)).strftime("%H:%M")


def test_idle_stream_goes_and_old_recordings_are_deleted(start_server, tmp_path):
    workdir = tmp_path / "srv"
    root = workdir / "recordings"
    old = [make_recording(root, "oldcam", 10), make_recording(root, "oldcam", 9)]
    mixed_old = make_recording(root, "mixcam", 8)
    mixed_new = make_recording(root, "mixcam", 1)
    (root / "emptycam").mkdir(parents=True)
    # Left "recording" by a crash with an old end_time, but written to just now: its end
    # is its last write, so retention keeps it (open segments: see the in-process tests).
    open_segment = make_recording(root, "opencam", 30, status="recording", mtime=time.time())

    server = start_server(
        {
            "streams": {"timeout_seconds": 1, "resend_seconds": 0.25},
            "cleanup": {"interval_seconds": 0.2, "schedule_time": far_schedule()},
            "recording": {"retention_days": 7},
        },
        workdir=workdir,
    )
    assert publish(server.url, "idlecam", make_jpeg()).status_code == 200
    assert "idlecam" in stream_names(server.url)
    began = time.monotonic()
    with httpx.stream("GET", f"{server.url}/stream/idlecam", timeout=10) as viewer:
        parts = [jpeg for _, jpeg in iter_parts(viewer.iter_bytes())]  # ends when removed
    assert parts and parts[0][:2] == b"\xff\xd8"
    assert time.monotonic() - began < 10  # the response ended; it did not time out
    assert "idlecam" not in stream_names(server.url)
    assert "stream idlecam removed (inactive for" in server.output()

    wait_for(  # files go before the log lines that report them: wait for both
        lambda: not (root / "oldcam").exists() and "deleted 3 recordings" in server.output(),
        what="oldcam to be deleted",
    )
    assert not mixed_old.exists() and not mixed_old.with_suffix(".json").exists()
    assert mixed_new.exists() and mixed_new.with_suffix(".json").exists()
    assert not (root / "emptycam").exists()
    assert open_segment.exists() and open_segment.with_suffix(".json").exists()
    log = server.output()
    for video in (*old, mixed_old):
        assert f"deleted recording {video.parent.name}/{video.name} (" in log
    assert "deleted 3 recordings" in log

    # the recorder closed the stream's segment as complete
    sidecars = wait_for(lambda: list((root / "idlecam").glob("*.json")), what="a sidecar")
    wait_for(
        lambda: all(json.loads(p.read_text())["status"] == "complete" for p in sidecars),
        what="complete sidecars",
    )

    # A publisher that comes back simply re-creates the stream.
    assert publish(server.url, "idlecam", make_jpeg(seed=2)).status_code == 200
    assert "idlecam" in stream_names(server.url)


def test_run_endpoint_reports_then_removes(start_server):
    server = start_server(
        {
            "streams": {"timeout_seconds": 1},
            "cleanup": {"interval_seconds": 3600, "schedule_time": far_schedule()},
            "recording": {"retention_days": 2},
        }
    )
    wait_for(lambda: "cleanup of" in server.output(), what="the start-up sweep")
    expired_video = make_recording(server.recordings, "yardcam", 3)
    kept_video = make_recording(server.recordings, "gatecam", 1)
    assert publish(server.url, "quietcam", make_jpeg()).status_code == 200
    time.sleep(1.2)  # let quietcam pass its 1 s timeout; the loop sleeps for an hour

    preview = httpx.post(f"{server.url}/api/cleanup/run?dry_run=true", timeout=10).json()
    assert preview["status"] == "success" and preview["dry_run"] is True
    assert [s["name"] for s in preview["streams"]] == ["quietcam"]
    [item] = preview["recordings"]
    assert item["file"] == expired_video.name and item["size_bytes"] == size_of(expired_video)
    assert item["stream"] == "yardcam" and item["reason"].startswith("older than")
    assert preview["directories"] == ["yardcam"] and preview["freed_bytes"] == item["size_bytes"]
    assert expired_video.exists() and "quietcam" in stream_names(server.url)

    done = httpx.post(f"{server.url}/api/cleanup/run?dry_run=false", timeout=10).json()
    assert done["dry_run"] is False
    assert [s["name"] for s in done["streams"]] == ["quietcam"]
    assert [r["file"] for r in done["recordings"]] == [expired_video.name]
    assert done["freed_bytes"] == preview["freed_bytes"] and done["directories"] == ["yardcam"]
    assert not (server.recordings / "yardcam").exists() and kept_video.exists()
    assert "quietcam" not in stream_names(server.url)

    bad = httpx.post(f"{server.url}/api/cleanup/run?dry_run=maybe", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_parameters"


def test_disk_cap_deletes_the_oldest_first(start_server, tmp_path):
    workdir = tmp_path / "srv"
    root = workdir / "recordings"
    videos = [make_recording(root, cam, days) for cam, days in
              (("a", 5), ("b", 4), ("a", 3), ("b", 2))]
    sizes = [size_of(v) for v in videos]
    cap = sum(sizes) - sizes[0] - sizes[1] + sizes[2] // 2  # two oldest must go, no more
    server = start_server(
        {
            "cleanup": {"interval_seconds": 0.2, "schedule_time": far_schedule()},
            "recording": {"retention_days": 0, "max_total_gb": cap / 1024**3},
        },
        workdir=workdir,
    )
    lines = [f"deleted recording {v.parent.name}/{v.name}" for v in videos[:2]]
    # The file goes first, then the log line: wait for the line.
    wait_for(lambda: lines[1] in server.output(), what="the cap to be enforced")
    assert not videos[0].exists() and not videos[1].exists()
    assert videos[2].exists() and videos[3].exists()
    log = server.output()
    first, second = (log.index(line) for line in lines)
    assert first < second and "disk guard" in log
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "healthy"


def test_short_free_space_deletes_finished_segments_then_reports(start_server, tmp_path):
    workdir = tmp_path / "srv"
    root = workdir / "recordings"
    finished = [make_recording(root, "cam", 2), make_recording(root, "cam", 1)]
    server = start_server(
        {
            "cleanup": {"interval_seconds": 0.2, "schedule_time": far_schedule()},
            "recording": {"retention_days": 0, "min_free_gb": 1_000_000},  # never satisfied
        },
        workdir=workdir,
    )
    health = wait_for(
        lambda: (h := httpx.get(f"{server.url}/health", timeout=5).json())["problems"] and h,
        what="/health to report the disk",
    )
    assert health["status"] == "degraded"
    [problem] = health["problems"]  # reported once, by the paused recorder
    assert problem.startswith("recording paused:")
    assert "recording.min_free_gb" in problem and "free" in problem
    assert not any(video.exists() for video in finished)
    # Live view goes on while recording is paused; nothing new is written.
    assert publish(server.url, "cam", make_jpeg()).status_code == 200
    assert httpx.get(f"{server.url}/snapshot/cam").status_code == 200
    assert list(root.glob("cam/*.mp4")) == []


def recorder_runtime(root: Path, **recording) -> Runtime:
    """A real runtime (registry, recorder, cleanup) over ``root``, not yet started."""
    settings = load_settings(None, {"recording": {"directory": str(root), **recording}})
    return Runtime(settings)


async def open_segment_of(runtime: Runtime, name: str) -> Path:
    """Publish to ``name`` until the real recorder holds an open segment; return it."""
    stream = runtime.registry.get_or_create(name)
    jpeg = make_jpeg(64, 48)
    for _ in range(200):
        stream.publish(jpeg, inspect_jpeg(jpeg))
        paths = runtime.recorder.open_paths()
        if paths and next(iter(paths)).exists():
            return next(iter(paths))
        await asyncio.sleep(0.02)
    raise AssertionError("the recorder never opened a segment")


def test_guard_pauses_the_recorder_and_resumes_when_space_is_back(tmp_path):
    root = tmp_path / "recordings"
    finished = make_recording(root, "cam", 30)
    runtime = recorder_runtime(root, min_free_gb=10**6)
    service = runtime.cleanup

    async def scenario():
        await runtime.recorder.start()
        try:
            open_video = await open_segment_of(runtime, "live")
            first = await service.sweep_disk(retention=False)
            assert [r["file"] for r in first["recordings"]] == [finished.name]
            assert open_video.exists() and not finished.exists()
            assert first["disk"]["recording_paused"]
            [problem] = runtime.problems()
            assert problem.startswith("recording paused:") and "min_free_gb" in problem
            # Still short: still one problem. The paused segment is now closed, so this
            # sweep may delete it too (oldest finished first): nothing to assert on it.
            await service.sweep_disk(retention=False)
            assert len(runtime.problems()) == 1
            runtime.settings.recording.min_free_gb = 0.000001  # space is back
            await service.sweep_disk(retention=False)
            assert runtime.problems() == []
        finally:
            await runtime.recorder.stop()

    asyncio.run(scenario())


def test_an_open_segment_older_than_retention_survives(tmp_path):
    """Only ``open_paths()`` protects it: its last write is older than the retention."""
    root = tmp_path / "recordings"
    runtime = recorder_runtime(root, retention_days=1)
    expired = make_recording(root, "cam", 3)

    async def scenario():
        await runtime.recorder.start()
        try:
            open_video = await open_segment_of(runtime, "live")
            old = time.time() - 2 * DAY
            os.utime(open_video, (old, old))
            result = await runtime.cleanup.sweep_disk(retention=True)
            return open_video, [r["file"] for r in result["recordings"]]
        finally:
            await runtime.recorder.stop()

    open_video, removed = asyncio.run(scenario())
    assert removed == [expired.name]
    assert open_video.exists() and not expired.exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_nothing_to_do_on_an_empty_directory(tmp_path, dry_run):
    settings = load_settings(None, {"recording": {"directory": str(tmp_path / "none")}})
    service = CleanupService(settings, StreamRegistry(settings.streams))
    result = asyncio.run(service.run_now(dry_run))
    assert result["recordings"] == [] and result["streams"] == [] and result["freed_bytes"] == 0
    assert not (tmp_path / "none").exists()


def test_nothing_is_deleted_when_the_recorder_cannot_say_what_is_open(tmp_path):
    root = tmp_path / "recordings"
    old = make_recording(root, "cam", 30)
    settings = load_settings(None, {"recording": {"directory": str(root), "retention_days": 1}})

    class Broken(RealRecorder):  # fault injection: the real recorder, one method failing
        def open_paths(self):
            raise RuntimeError("recorder thread died")

    broken = Broken(settings.recording)
    service = CleanupService(settings, StreamRegistry(settings.streams), lambda: broken)
    with pytest.raises(RuntimeError):
        asyncio.run(service.sweep_disk(retention=True))
    assert old.exists()
