"""Recording against a real server: files decoded back with PyAV."""

import random
import re

import av
import httpx
import pytest

from recording_tools import BRIEF_FIELDS, decode, publish_paced, videos, wait_closed

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def _close_stream(server, name):
    assert httpx.delete(f"{server.url}/api/streams/{name}").status_code == 200


@pytest.mark.parametrize(
    "intervals, fps",
    [
        ([0.1] * 30, 30),  # 10 fps
        ([1 / 30] * 60, 30),  # 30 fps with the default cap of 30: jitter costs no frame
        (random.Random(7).choices([0.01, 0.04, 0.1, 0.25, 0.4], k=25), 120),  # irregular
    ],
    ids=["10fps", "30fps", "irregular"],
)
def test_passthrough_keeps_every_frame_at_its_arrival_time(start_server, intervals, fps):
    server = start_server({"recording": {"fps": fps}})
    jpegs, covered = publish_paced(server.url, "cam", intervals)
    _close_stream(server, "cam")  # a deleted stream's segment closes
    [meta] = wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    got = decode(video)
    assert got.codec == "mjpeg"
    assert got.frames == len(jpegs) == meta["total_frames"]
    assert got.packets == jpegs  # passthrough: the uploaded JPEGs, byte for byte
    assert all(b > a for a, b in zip(got.pts, got.pts[1:]))
    assert got.duration == pytest.approx(covered, rel=0.05)
    assert meta["duration_seconds"] == pytest.approx(got.duration, abs=0.002)
    assert BRIEF_FIELDS <= meta.keys()
    assert ISO_Z.fullmatch(meta["start_time"]) and ISO_Z.fullmatch(meta["end_time"])
    assert meta["codec"] == "mjpeg" and meta["target_fps"] == fps
    assert meta["recording_path"] == str(video)
    assert (meta["width"], meta["height"]) == (320, 240)
    assert meta["size_bytes"] == video.stat().st_size and meta["frames_dropped"] == 0
    assert meta["average_fps"] == pytest.approx(len(jpegs) / got.duration, rel=0.01)


def test_segments_rotate_by_time_and_resolution(start_server):
    server = start_server({"recording": {"segment_seconds": 1.0}})
    small, _ = publish_paced(server.url, "cam", [0.1] * 25)  # 2.5 s → 3 segments
    big, _ = publish_paced(server.url, "cam", [0.1] * 4, size=(480, 360), seed=50)
    _close_stream(server, "cam")
    metas = wait_closed(server.recordings, "cam", count=4)
    decoded = [decode(v) for v in videos(server.recordings, "cam")]
    assert sum(d.frames for d in decoded) == len(small) + len(big)
    assert [(d.width, d.height) for d in decoded] == [(320, 240)] * 3 + [(480, 360)]
    assert [m["total_frames"] for m in metas] == [d.frames for d in decoded]
    assert decoded[-1].frames == len(big)
    assert all(d.duration <= 1.0 + 0.15 for d in decoded)


def test_fps_cap_skips_frames_for_the_file_only(start_server):
    server = start_server({"recording": {"fps": 10}})
    jpegs, covered = publish_paced(server.url, "cam", [0.02] * 50)  # 50 fps for 1 s
    stats = httpx.get(f"{server.url}/api/streams/cam/stats").json()
    assert stats["total_frames"] == 50  # live view got every frame
    _close_stream(server, "cam")
    [meta] = wait_closed(server.recordings, "cam")
    assert meta["target_fps"] == 10
    assert 8 <= meta["total_frames"] <= 14  # ≈ 10 fps over 1 s, plus a burst of 2
    assert stats["recording"]["frames_skipped_fps"] == 50 - meta["total_frames"]


@pytest.mark.parametrize("codec, decoder", [("mp4v", "mpeg4"), ("h264", "h264")])
def test_transcoded_codecs_decode(start_server, codec, decoder):
    server = start_server({"recording": {"codec": codec}})
    jpegs, covered = publish_paced(server.url, "cam", [1 / 15] * 20)
    _close_stream(server, "cam")
    [meta] = wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    got = decode(video)
    assert got.codec == decoder and meta["codec"] == codec
    assert got.frames == len(jpegs) == meta["total_frames"]
    assert got.duration == pytest.approx(covered, rel=0.05)
    # Key frames where gop_size puts them (one a second at the default 30 fps), not on
    # every frame because each came from a JPEG.
    with av.open(str(video)) as container:
        keys = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert keys[0] and sum(keys) <= 2, keys


def test_idle_stream_closes_its_segment_and_stats_show_it(start_server):
    server = start_server({"recording": {"idle_close_seconds": 0.5}})
    publish_paced(server.url, "cam", [0.05] * 5)
    stats = httpx.get(f"{server.url}/api/streams/cam/stats").json()["recording"]
    [video] = server.recordings.glob("cam/*.mp4")
    assert stats["segment"] == str(video) and stats["frames_written"] == 5
    [meta] = wait_closed(server.recordings, "cam")
    assert meta["total_frames"] == 5
    stats = httpx.get(f"{server.url}/api/streams/cam/stats").json()["recording"]
    assert stats["segment"] is None and stats["bytes_written"] > 0


def test_graceful_stop_completes_open_segments(start_server):
    server = start_server()
    publish_paced(server.url, "a", [0.05] * 4)
    publish_paced(server.url, "b", [0.05] * 3)
    server.stop()  # SIGTERM: graceful shutdown
    assert [m["total_frames"] for m in wait_closed(server.recordings, "a")] == [4]
    assert [m["total_frames"] for m in wait_closed(server.recordings, "b")] == [3]


def test_disabled_recording_writes_nothing(start_server):
    server = start_server({"recording": {"enabled": False}})
    publish_paced(server.url, "cam", [0.01] * 3)
    assert httpx.get(f"{server.url}/api/streams/cam/stats").json()["recording"] is None
    assert not server.recordings.exists() or not any(server.recordings.rglob("*.mp4"))


def test_ffmpeg_reads_the_fragments_frame_for_frame_and_copies_them_to_a_plain_mp4(
    start_server, tmp_path
):
    # The passthrough writer makes its own moof/mdat fragments after PyAV's header:
    # the real ffprobe must count every frame with the arrival timing, and ffmpeg must
    # remux the file (stream copy) into a plain MP4 that decodes to the same frames.
    import json
    import subprocess

    server = start_server()
    intervals = [0.05] * 10 + [0.3] + [0.02] * 10
    jpegs, covered = publish_paced(server.url, "cam", intervals)
    _close_stream(server, "cam")
    wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
         "stream=codec_name,nb_read_packets,width,height:format=duration", "-of", "json",
         str(video)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "mjpeg"
    assert int(info["streams"][0]["nb_read_packets"]) == len(jpegs)
    assert float(info["format"]["duration"]) == pytest.approx(covered, rel=0.05)
    plain = tmp_path / "copy.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-c", "copy", str(plain)],
        check=True, timeout=60,
    )
    again = decode(plain)
    assert again.packets == jpegs
    assert again.pts == pytest.approx(decode(video).pts, abs=0.002)
