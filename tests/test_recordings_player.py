"""Replay from any time and at any speed, and single frames for stepping: recordings
made through a real server, read back over HTTP and checked against what was published
and against PyAV's reading of the file."""

import time
from datetime import datetime

import httpx
import pytest

from helpers import iter_parts
from recording_tools import decode, publish_paced, wait_closed


@pytest.fixture(scope="module")
def recorded(shared_server):
    """One finished recording of ``player_cam``: (server, its entry, its JPEGs, PyAV's view)."""
    jpegs, covered = publish_paced(shared_server.url, "player_cam", [0.05] * 12)
    assert httpx.delete(f"{shared_server.url}/api/streams/player_cam").status_code == 200
    wait_closed(shared_server.recordings, "player_cam")
    [entry] = httpx.get(f"{shared_server.url}/api/recordings",
                        params={"stream": "player_cam"}).json()["recordings"]
    decoded = decode(shared_server.recordings / "player_cam" / entry["file"])
    assert decoded.packets == jpegs
    return shared_server, entry, jpegs, decoded, covered


def _play(url: str, **params) -> tuple[httpx.Headers, list[tuple[dict, bytes]]]:
    with httpx.stream("GET", url, params=params, timeout=20) as response:
        assert response.status_code == 200, response.read()
        return response.headers, list(iter_parts(response.iter_bytes()))


def test_play_from_a_time_starts_at_the_frame_on_screen_then(recorded):
    server, entry, jpegs, decoded, _ = recorded
    url = server.url + entry["play_url"]
    pts = decoded.pts
    start = datetime.fromisoformat(entry["start_time"].replace("Z", "+00:00")).timestamp()
    for i, seconds in ((0, 0.0), (5, pts[5]), (5, (pts[5] + pts[6]) / 2), (11, pts[11] + 60)):
        headers, parts = _play(url, start=seconds)
        assert float(headers["x-recording-start"]) == start
        assert [body for _, body in parts] == jpegs[i:], seconds
        offsets = [float(h["x-offset"]) for h, _ in parts]
        assert offsets == pts[i:]  # exactly the file's sample times
        stamps = [float(h["x-timestamp"]) for h, _ in parts]
        assert stamps == pytest.approx([start + o for o in offsets], abs=1e-6)


def test_play_speed_scales_the_pace(recorded):
    server, entry, jpegs, decoded, covered = recorded
    url = server.url + entry["play_url"]
    started = time.monotonic()
    _, parts = _play(url, speed=0.25)
    slow = time.monotonic() - started
    assert [body for _, body in parts] == jpegs
    # A quarter of the pace: at least four times what the frames span (a lower bound:
    # a busy machine only makes it slower).
    assert slow >= 0.8 * (covered - 0.05) / 0.25
    _, parts = _play(url, speed=8, start=decoded.pts[3])
    assert [body for _, body in parts] == jpegs[3:]
    assert [float(h["x-offset"]) for h, _ in parts] == decoded.pts[3:]


@pytest.mark.parametrize("query", ["speed=0.2", "speed=9", "speed=abc", "speed=nan",
                                   "start=-1", "start=inf", "start=1e300"])
def test_play_refuses_a_speed_or_start_out_of_range(recorded, query):
    server, entry, *_ = recorded
    answer = httpx.get(f"{server.url}{entry['play_url']}?{query}", timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_parameters"


def test_frame_steps_through_every_frame(recorded):
    server, entry, jpegs, decoded, _ = recorded
    url = server.url + entry["play_url"].removesuffix("/play") + "/frame"
    pts = decoded.pts
    # Forward from the first frame, following X-Next-Offset, then back again.
    seen, t = [], 0.0
    while t is not None:
        answer = httpx.get(url, params={"t": t}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
        offset = float(answer.headers["x-offset"])
        seen.append((offset, answer.content))
        start = float(answer.headers["x-recording-start"])
        assert float(answer.headers["x-timestamp"]) == pytest.approx(start + offset, abs=1e-6)
        t = answer.headers.get("x-next-offset")
    assert seen == list(zip(pts, jpegs))
    back, t = [], str(pts[-1])
    while t is not None:
        answer = httpx.get(url, params={"t": t}, timeout=10)
        back.append(answer.content)
        t = answer.headers.get("x-previous-offset")
    assert back == jpegs[::-1]
    # Between two frames: the earlier one; past the end: the last one.
    between = httpx.get(url, params={"t": (pts[4] + pts[5]) / 2}, timeout=10)
    assert between.content == jpegs[4]
    assert float(between.headers["x-previous-offset"]) == pts[3]
    assert float(between.headers["x-next-offset"]) == pts[5]
    last = httpx.get(url, params={"t": 3600}, timeout=10)
    assert last.content == jpegs[-1] and "x-next-offset" not in last.headers


def test_frame_errors_are_json(recorded):
    server, entry, *_ = recorded
    url = server.url + entry["play_url"].removesuffix("/play") + "/frame"
    for params in ({}, {"t": "-0.5"}, {"t": "soon"}, {"t": "1e300"}):
        answer = httpx.get(url, params=params, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_parameters"
    missing = httpx.get(f"{server.url}/api/recordings/player_cam/player_cam_20200101_000000.mp4"
                        "/frame", params={"t": 0}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    bad = httpx.get(f"{server.url}/api/recordings/bad%20name/x.mp4/frame", params={"t": 0})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_stream_name"


def test_frame_and_seek_of_a_transcoded_recording(start_server):
    server = start_server({"recording": {"codec": "h264"}})
    publish_paced(server.url, "cam", [0.05] * 8)
    assert httpx.delete(f"{server.url}/api/streams/cam").status_code == 200
    wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    pts = decode(video).pts
    base = f"{server.url}/api/recordings/cam/{video.name}"
    answer = httpx.get(f"{base}/frame", params={"t": pts[5]}, timeout=10)
    assert answer.status_code == 200
    assert answer.content[:2] == b"\xff\xd8" and answer.content[-2:] == b"\xff\xd9"
    assert float(answer.headers["x-offset"]) == pts[5]
    assert float(answer.headers["x-previous-offset"]) == pts[4]
    assert float(answer.headers["x-next-offset"]) == pts[6]
    _, parts = _play(f"{base}/play", start=pts[5], speed=8)
    assert [float(h["x-offset"]) for h, _ in parts] == pts[5:]
