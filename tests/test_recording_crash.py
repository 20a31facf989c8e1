"""kill -9 and disk errors against a real server process."""

import os
import resource
import signal
import threading
import time
from pathlib import Path

import httpx

from helpers import ServerProcess, iter_parts, make_jpeg, publish
from helpers import wait_for
from recording_tools import decode, publish_paced, sidecars


def test_kill_9_mid_recording_then_restart_recovers(start_server, tmp_path):
    workdir = tmp_path / "node"
    server = start_server(workdir=workdir)
    publish_paced(server.url, "a", [0.05] * 20)
    publish_paced(server.url, "b", [0.05] * 10)
    assert [s["status"] for s in sidecars(server.recordings, "a")] == ["recording"]
    for name, count in (("a", 20), ("b", 10)):  # the writer threads have taken every frame
        wait_for(lambda: _written(server, name) == count, what=f"{count} frames of {name} written")
    server.kill()
    [video_a] = server.recordings.glob("a/*.mp4")
    [video_b] = server.recordings.glob("b/*.mp4")
    # Every file plays up to its last frame but one.
    assert decode(video_a).frames >= 19 and decode(video_b).frames >= 9
    video_b.with_suffix(".json").unlink()  # a video that lost its sidecar gets one

    again = start_server(workdir=workdir)
    for stream, video in (("a", video_a), ("b", video_b)):
        [meta] = wait_for(
            lambda: [m for m in sidecars(again.recordings, stream) if m["status"] == "recovered"],
            what=f"recovered sidecar of {stream}",
        )
        got = decode(video)
        assert meta["total_frames"] == got.frames
        assert meta["duration_seconds"] == abs(meta["duration_seconds"])
        assert abs(meta["duration_seconds"] - got.duration) < 0.01
        assert meta["end_time"] and meta["size_bytes"] == video.stat().st_size
        assert meta["codec"] == "mjpeg" and (meta["width"], meta["height"]) == (320, 240)
    # The restarted server records again, into a new file.
    publish_paced(again.url, "a", [0.05] * 3)
    assert len(list(again.recordings.glob("a/*.mp4"))) == 2


def _written(server, name):
    return httpx.get(f"{server.url}/api/streams/{name}/stats").json()["recording"]["frames_written"]


def _limit_file_size():
    # The kernel sends SIGXFSZ (default: kill) past the limit; ignored, write() fails
    # with EFBIG instead, which is what a full disk looks like to the recorder.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_disk_error_keeps_live_view_and_degrades_health(tmp_path):
    server = ServerProcess(tmp_path / "srv", {"logging": {"file": None}})
    server.preexec_fn = _limit_file_size
    server.start()
    try:
        stop = threading.Event()
        sent = []

        def publisher():
            with httpx.Client(timeout=10) as client:
                i = 0
                while not stop.is_set():
                    jpeg = make_jpeg(320, 240, seed=i)
                    assert publish(server.url, "cam", jpeg, client).status_code == 200
                    sent.append(jpeg)
                    i += 1
                    time.sleep(0.02)

        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        try:
            health = wait_for(
                lambda: (h := httpx.get(f"{server.url}/health").json())["status"] == "degraded"
                and h,
                what="health degraded",
            )
            assert any("cam" in p and "recording" in p for p in health["problems"])
            with httpx.stream("GET", f"{server.url}/stream/cam", timeout=10) as response:
                parts = iter_parts(response.iter_bytes())
                frames = [next(parts)[1] for _ in range(5)]
            assert len(set(frames)) >= 3  # live frames keep coming while recording fails
            stats = httpx.get(f"{server.url}/api/streams/cam/stats").json()["recording"]
            assert stats["errors"] >= 1 and stats["frames_dropped"] >= 1
            # After the back-off a new segment records again and health recovers.
            wait_for(lambda: httpx.get(f"{server.url}/health").json()["status"] == "healthy",
                     what="health healthy again")
        finally:
            stop.set()
            thread.join()
    finally:
        server.stop()
    assert "File too large" in server.output()
    metas = sidecars(server.recordings, "cam")
    assert len(metas) >= 2
    # The segment that hit the error says what the file really holds: the file is cut
    # back to its last whole fragment, so every frame in it is whole.
    assert metas[0]["status"] == "torn"
    torn = decode(Path(metas[0]["recording_path"]))
    assert metas[0]["total_frames"] == torn.frames > 0
    assert all(p[-2:] == b"\xff\xd9" for p in torn.packets)
    assert all(p.stat().st_size > 0 for p in server.recordings.rglob("*.mp4"))
    assert not list(server.recordings.rglob("*.tmp"))


def test_restart_removes_what_interrupted_writes_left(start_server, tmp_path):
    workdir = tmp_path / "node"
    folder = workdir / "recordings" / "cam"
    folder.mkdir(parents=True)
    empty = folder / "cam_20260101_000000.mp4"  # created, header refused (disk full)
    empty.write_bytes(b"")
    temp = folder / ".cam_20260101_000001.json.tmp"  # a sidecar write cut short
    temp.write_text('{"stream_name": "ca')
    other = folder / "notes.tmp"  # not a sidecar's temp file: left alone
    other.write_text("mine")
    server = start_server(workdir=workdir)
    wait_for(lambda: not empty.exists() and not temp.exists(), what="leftovers removed")
    assert other.exists()
    assert httpx.get(f"{server.url}/api/recordings").json()["recordings"] == []


def test_recovery_leaves_files_newer_than_its_start_to_the_process_writing_them(tmp_path):
    # serve --workers: another process records into the same folders and reserves each
    # new segment as an empty file; what changed after this process started is its.
    from robogpt_video.recording.recovery import recover
    from robogpt_video.recording.store import RecordingStore

    folder = tmp_path / "cam"
    folder.mkdir()
    names = ["cam_20260101_000000.mp4", ".cam_20260101_000000.json.tmp",
             "cam_20260101_000001.mp4", ".cam_20260101_000001.json.tmp"]
    old_video, old_temp, new_video, new_temp = (folder / n for n in names)
    for path in (old_video, old_temp, new_video, new_temp):
        path.write_bytes(b"")
    for path in (old_video, old_temp):
        os.utime(path, (1_000_000, 1_000_000))
    recover(RecordingStore(tmp_path), before=time.time() - 60)
    assert not old_video.exists() and not old_temp.exists()
    assert new_video.exists() and new_temp.exists()
    assert not new_video.with_suffix(".json").exists()  # no "recovered" sidecar for it
