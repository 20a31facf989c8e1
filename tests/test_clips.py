"""Clip export on a real server: recordings made by publishing through it, clips made
with PyAV, checked with PyAV, ffprobe and a real headless Chromium (issue 12, item 4)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import av
import httpx
import pytest

from browser import headless_chromium
from helpers import make_jpeg, publish, wait_for
from recording_tools import decode, sidecars, wait_closed
from robogpt_video.recording.store import sidecar_time

SMALL, BIG = (320, 240), (480, 360)


def _publish(url: str, name: str, count: int, size=SMALL, seed: int = 0, pause: float = 0.05):
    """Publish ``count`` frames, ``pause`` apart (pacing, not synchronisation)."""
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            response = publish(url, name, make_jpeg(*size, seed=seed + i), client)
            assert response.status_code == 200, response.text
            time.sleep(pause)


def _arrivals(url: str, name: str) -> list[float]:
    """The arrival times of the stream's frames, as the server recorded them."""
    return [f["timestamp"] for f in httpx.get(f"{url}/api/streams/{name}/frames").json()["frames"]]


def _close(url: str, name: str) -> None:
    assert httpx.delete(f"{url}/api/streams/{name}").status_code == 200


def _recorded(server, name: str, segments: list[tuple[int, tuple[int, int]]]) -> list[float]:
    """Record ``name`` as the given (frames, size) segments (a new size starts a new
    segment), close it, and return every frame's arrival time."""
    seed = 0
    for count, size in segments:
        _publish(server.url, name, count, size, seed)
        seed += count
    arrivals = _arrivals(server.url, name)
    assert len(arrivals) == seed  # every frame is still listed (max_buffer_frames)
    _close(server.url, name)
    wait_closed(server.recordings, name, count=len(segments))
    return arrivals


def _wait_done(url: str, clip: dict, headers: dict | None = None) -> tuple[dict, list[float]]:
    """Poll a job until it is ready or failed; its last state and every progress seen."""
    seen = []

    def done():
        state = httpx.get(f"{url}/api/clips/{clip['id']}", headers=headers, timeout=10).json()
        seen.append(state["progress"])
        return state if state["status"] in ("ready", "failed") else None

    return wait_for(done, timeout=60, what=f"clip {clip['id']} to finish"), seen


def _frame_times(path: Path) -> list[float]:
    """The presentation time of every decoded frame, in the order they are shown."""
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def _boxes(data: bytes) -> list[str]:
    """The top-level MP4 boxes, in file order."""
    names, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if size == 1:
            size = struct.unpack_from(">Q", data, at + 8)[0]
        names.append(kind.decode("latin-1"))
        if size < 8:
            break
        at += size
    return names


def _litter(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.exists() else []


def test_a_clip_across_two_segments_plays_with_the_recorded_timing(start_server, tmp_path):
    server = start_server()
    # The second size opens a second segment; its frames are scaled to the first size.
    arrivals = _recorded(server, "cam", [(12, SMALL), (10, BIG)])
    body = {"stream": "cam", "start": arrivals[0] - 0.5, "end": arrivals[-1] + 0.5}
    asked = httpx.post(f"{server.url}/api/clips", json=body, timeout=10)
    assert asked.status_code == 202, asked.text
    clip = asked.json()
    assert clip["status"] in ("queued", "running") and clip["url"] == f"/api/clips/{clip['id']}.mp4"
    assert clip["start"] == body["start"] and clip["end"] == body["end"]

    again = httpx.post(f"{server.url}/api/clips", json=body, timeout=10)
    assert again.json()["id"] == clip["id"]  # the same job (or already its clip)

    state, progress = _wait_done(server.url, clip)
    assert state["status"] == "ready", state
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert state["frames_total"] == state["frames_done"] == len(arrivals)
    assert state["error"] is None

    url = f"{server.url}{clip['url']}"
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert len(whole.content) == state["size_bytes"]
    video = tmp_path / "clip.mp4"
    video.write_bytes(whole.content)
    got = decode(video)
    assert got.codec == "h264" and got.frames == len(arrivals)
    assert (got.width, got.height) == SMALL
    times = _frame_times(video)
    assert all(b > a for a, b in zip(times, times[1:]))
    offsets = [t - arrivals[0] for t in arrivals]
    assert times == pytest.approx(offsets, abs=0.005)

    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,pix_fmt,profile",
         "-of", "json", str(video)], capture_output=True, check=True, timeout=30).stdout)
    [stream] = probe["streams"]
    assert (stream["codec_name"], stream["pix_fmt"], stream["profile"]) == ("h264", "yuv420p", "Main")
    types = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "frame=pict_type", "-of", "csv=p=0",
         str(video)], capture_output=True, check=True, text=True, timeout=30).stdout.split()
    types = [t.strip(",") for t in types]  # the first line may carry side data
    assert len(types) == len(arrivals) and types[0] == "I"
    assert types.count("I") <= 2, types  # inter frames, not a JPEG's every frame a key frame
    boxes = _boxes(whole.content)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: playable before the end

    part = httpx.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == whole.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(whole.content)}"
    past = httpx.get(url, headers={"Range": f"bytes={len(whole.content)}-"})
    assert past.status_code == 416
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)

    cache = server.recordings / ".clips"
    made = (cache / f"{clip['id']}.mp4").stat()
    cached = httpx.post(f"{server.url}/api/clips", json=body, timeout=10)
    assert cached.status_code == 200 and cached.json() == state
    assert (cache / f"{clip['id']}.mp4").stat().st_mtime_ns == made.st_mtime_ns  # not made again
    # ISO 8601 times name the same range only if equal to the millisecond: another clip.
    iso = {**body, "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(body["start"] - 1))}
    other = httpx.post(f"{server.url}/api/clips", json=iso, timeout=10)
    assert other.status_code == 202 and other.json()["id"] != clip["id"]
    assert _wait_done(server.url, other.json())[0]["frames_total"] == len(arrivals)

    # The cache is no recording: not listed, not counted, not swept by cleanup.
    listing = httpx.get(f"{server.url}/api/recordings").json()
    assert {r["stream_name"] for r in listing["recordings"]} == {"cam"} and listing["count"] == 2
    swept = httpx.post(f"{server.url}/api/cleanup/run", timeout=30).json()
    assert swept["recordings"] == [] and ".clips" not in swept["directories"]
    assert httpx.get(url).status_code == 200
    assert _litter(cache) == []


def test_a_segment_being_written_gives_what_it_has(start_server, tmp_path):
    server = start_server()
    _publish(server.url, "cam", 8)
    arrivals = _arrivals(server.url, "cam")
    body = {"stream": "cam", "start": arrivals[0] - 1, "end": arrivals[-1] + 1}
    clip = httpx.post(f"{server.url}/api/clips", json=body, timeout=10).json()
    state, _ = _wait_done(server.url, clip)
    assert state["status"] == "ready", state
    # The writer keeps the newest frame back until the next one (docs/recording.md).
    assert 1 <= state["frames_total"] <= len(arrivals)
    video = tmp_path / "open.mp4"
    video.write_bytes(httpx.get(f"{server.url}{clip['url']}").content)
    got = decode(video)
    assert got.codec == "h264" and got.frames == state["frames_total"]
    assert _frame_times(video) == pytest.approx(
        [t - arrivals[0] for t in arrivals[: got.frames]], abs=0.005)


def test_bad_requests_get_json_errors(start_server):
    server = start_server({"clips": {"max_seconds": 60}})
    arrivals = _recorded(server, "cam", [(3, SMALL)])
    api = f"{server.url}/api/clips"
    now = arrivals[0]
    bad = [
        (b"not json", "invalid_parameters"),
        (json.dumps([1, 2]), "invalid_parameters"),
        (json.dumps({"stream": "cam", "start": now}), "invalid_parameters"),
        (json.dumps({"stream": "cam", "start": now, "end": now + 1, "x": 1}), "invalid_parameters"),
        (json.dumps({"stream": "cam", "start": True, "end": now + 1}), "invalid_parameters"),
        (json.dumps({"stream": "cam", "start": [], "end": now + 1}), "invalid_parameters"),
        (json.dumps({"stream": "../x", "start": now, "end": now + 1}), "invalid_stream_name"),
        (json.dumps({"stream": "cam", "start": "yesterday", "end": now}), "invalid_time"),
        ('{"stream": "cam", "start": NaN, "end": 1}', "invalid_time"),
        (json.dumps({"stream": "cam", "start": now, "end": now}), "invalid_range"),
        (json.dumps({"stream": "cam", "start": now, "end": now - 5}), "invalid_range"),
        (json.dumps({"stream": "cam", "start": now, "end": now + 61}), "range_too_long"),
    ]
    for content, code in bad:
        answer = httpx.post(api, content=content, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (content, answer.text)
        assert answer.json()["error"] == code, (content, answer.text)
    for body in ({"stream": "nothing", "start": now - 5, "end": now + 5},
                 {"stream": "cam", "start": now - 50, "end": now - 40},
                 {"stream": "cam", "start": "2001-01-01T00:00:00", "end": "2001-01-01T00:00:30"}):
        answer = httpx.post(api, json=body)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", answer.text
    for path in ("0" * 32, "0" * 32 + ".mp4", "nonsense", "nonsense.mp4", "../x"):
        answer = httpx.get(f"{api}/{path}")
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", path


def test_an_unreadable_segment_fails_the_job_and_leaves_nothing(start_server):
    server = start_server()
    arrivals = _recorded(server, "cam", [(5, SMALL), (5, BIG)])
    _, second = sorted((server.recordings / "cam").glob("*.mp4"))
    second.write_bytes(b"\0not an mp4 any more" * 100)
    body = {"stream": "cam", "start": arrivals[0] - 1, "end": arrivals[-1] + 1}
    asked = httpx.post(f"{server.url}/api/clips", json=body)
    assert asked.status_code == 202
    state, _ = _wait_done(server.url, asked.json())
    assert state["status"] == "failed" and second.name in state["error"], state
    assert state["size_bytes"] is None
    not_ready = httpx.get(f"{server.url}{state['url']}")
    assert not_ready.status_code == 409 and not_ready.json()["error"] == "clip_not_ready"
    assert httpx.head(f"{server.url}{state['url']}").status_code == 409
    cache = server.recordings / ".clips"
    assert _litter(cache) == [] and not list(cache.glob(f"{state['id']}*"))
    # Asked again, a failed clip is tried again (a new job with the same id).
    retried = httpx.post(f"{server.url}/api/clips", json=body)
    assert retried.status_code == 202 and retried.json()["status"] in ("queued", "running")
    assert _wait_done(server.url, retried.json())[0]["status"] == "failed"


def test_the_cache_keeps_to_its_cap_and_a_restart_clears_temp_files(start_server):
    server = start_server({"clips": {"cache_mb": 0}})  # only the newest clip stays
    arrivals = _recorded(server, "cam", [(6, SMALL)])
    middle = (arrivals[2] + arrivals[3]) / 2
    first = {"stream": "cam", "start": arrivals[0] - 1, "end": middle}
    second = {"stream": "cam", "start": middle, "end": arrivals[-1] + 1}
    a = httpx.post(f"{server.url}/api/clips", json=first).json()
    assert _wait_done(server.url, a)[0]["frames_total"] == 3
    b = httpx.post(f"{server.url}/api/clips", json=second).json()
    assert _wait_done(server.url, b)[0]["frames_total"] == 3
    cache = server.recordings / ".clips"
    assert sorted(p.name for p in cache.iterdir()) == [f"{b['id']}.json", f"{b['id']}.mp4"]
    assert httpx.get(f"{server.url}/api/clips/{a['id']}").status_code == 404
    assert httpx.get(f"{server.url}{b['url']}").status_code == 200
    again = httpx.post(f"{server.url}/api/clips", json=first)
    assert again.status_code == 202 and again.json()["id"] == a["id"]  # made anew
    assert _wait_done(server.url, again.json())[0]["status"] == "ready"

    # What a killed server left: a temp file. The next start removes it, and a clip
    # made before the restart is still served from the cache.
    server.kill()
    stale = cache / f".{a['id']}.99999.mp4.tmp"
    stale.write_bytes(b"half a clip")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    server.start()
    assert not stale.exists()
    state = httpx.get(f"{server.url}/api/clips/{a['id']}").json()
    assert state["status"] == "ready" and state["frames_total"] == 3
    cached = httpx.post(f"{server.url}/api/clips", json=first)
    assert cached.status_code == 200 and cached.json()["id"] == a["id"]


USERS = [
    {"name": "pub", "token": "pub-token-7d1e", "permissions": [
        {"action": "publish"}, {"action": "view"}, {"action": "admin"}]},
    {"name": "player_a", "token": "a-token-0b3c", "permissions": [
        {"action": "playback", "streams": "cam_a*"}]},
    {"name": "player_b", "token": "b-token-5f9a", "permissions": [
        {"action": "playback", "streams": "cam_b*"}]},
]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_clip_needs_playback_on_its_stream(start_server):
    server = start_server({"auth": {"users": USERS}})
    pub, a, b = _bearer("pub-token-7d1e"), _bearer("a-token-0b3c"), _bearer("b-token-5f9a")
    with httpx.Client(timeout=10, headers=pub) as client:
        for i in range(4):
            assert publish(server.url, "cam_a", make_jpeg(seed=i), client).status_code == 200
        frames = client.get(f"{server.url}/api/streams/cam_a/frames").json()["frames"]
        assert client.delete(f"{server.url}/api/streams/cam_a").status_code == 200
    wait_closed(server.recordings, "cam_a")
    body = {"stream": "cam_a", "start": frames[0]["timestamp"] - 1,
            "end": frames[-1]["timestamp"] + 1}
    api = f"{server.url}/api/clips"

    refused = httpx.post(api, json=body, headers=b)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert httpx.post(api, json=body).status_code == 401
    asked = httpx.post(api, json=body, headers=a)
    assert asked.status_code == 202
    clip = asked.json()
    state, _ = _wait_done(server.url, clip, headers=a)
    assert state["status"] == "ready"
    for method, path in (("GET", f"/api/clips/{clip['id']}"), ("GET", clip["url"]),
                         ("HEAD", clip["url"])):
        assert httpx.request(method, f"{server.url}{path}", headers=b).status_code == 403
        assert httpx.request(method, f"{server.url}{path}").status_code == 401
        assert httpx.request(method, f"{server.url}{path}", headers=a).status_code == 200
    # The cached clip is refused as the job was.
    assert httpx.post(api, json=body, headers=b).status_code == 403


def test_the_clip_plays_in_chromium(start_server, tmp_path):
    server = start_server()
    arrivals = _recorded(server, "cam", [(20, SMALL)])
    body = {"stream": "cam", "start": arrivals[0] - 1, "end": arrivals[-1] + 1}
    clip = httpx.post(f"{server.url}/api/clips", json=body).json()
    assert _wait_done(server.url, clip)[0]["status"] == "ready"
    page = f'<video id="v" muted playsinline preload="auto" src="{clip["url"]}"></video>'
    with headless_chromium(tmp_path / "chrome") as browser:
        # A page of the server's origin (Chromium refuses a data: page's loads from a
        # local address), made a plain page holding one <video>.
        browser.goto(f"{server.url}/health")
        browser.js(f"document.body.innerHTML = {json.dumps(page)}; true")
        assert browser.js("""document.createElement("video")
                             .canPlayType('video/mp4; codecs="avc1.4D401E"')""") == "probably"
        browser.wait_for("document.getElementById('v').readyState >= 2")
        assert browser.js("document.getElementById('v').videoWidth") == SMALL[0]
        # Every time the playing position moves, and the end: it really plays.
        browser.js("""window.times = [];
            const v = document.getElementById('v');
            v.addEventListener('timeupdate', () => window.times.push(v.currentTime));
            v.play().then(() => true)""")
        browser.wait_for("document.getElementById('v').ended", timeout=30)
        times = browser.js("window.times")
        assert len({t for t in times if t > 0}) >= 2 and times == sorted(times), times
        assert browser.js("document.getElementById('v').error") is None


def test_a_stream_recorded_as_h264_makes_a_clip_too(start_server, tmp_path):
    server = start_server({"recording": {"codec": "h264"}})
    arrivals = _recorded(server, "cam", [(10, SMALL)])
    body = {"stream": "cam", "start": arrivals[0] - 1, "end": arrivals[-1] + 1}
    state, _ = _wait_done(server.url, httpx.post(f"{server.url}/api/clips", json=body).json())
    assert state["status"] == "ready" and state["frames_total"] == len(arrivals), state
    video = tmp_path / "h264.mp4"
    video.write_bytes(httpx.get(f"{server.url}{state['url']}").content)
    assert _frame_times(video) == pytest.approx([t - arrivals[0] for t in arrivals], abs=0.005)


def test_deleting_a_recording_removes_the_clips_made_from_it(start_server):
    server = start_server()
    arrivals = _recorded(server, "cam", [(4, SMALL), (4, BIG)])
    # A segment is a source of every range its sidecar's times overlap, frames or not:
    # "second" starts after the first segment's end.
    first_end = min(sidecar_time(s["end_time"]) for s in sidecars(server.recordings, "cam"))
    ranges = {"first": (arrivals[0] - 1, (arrivals[3] + arrivals[4]) / 2),
              "second": (first_end + 0.001, arrivals[-1] + 1),
              "both": (arrivals[0] - 1, arrivals[-1] + 1)}
    made = {}
    for label, (start, end) in ranges.items():
        asked = httpx.post(f"{server.url}/api/clips", json={"stream": "cam", "start": start,
                                                              "end": end}, timeout=10).json()
        assert _wait_done(server.url, asked)[0]["status"] == "ready"
        made[label] = asked
    cache = server.recordings / ".clips"
    # The cache's metadata names the segments a clip was made from.
    [[first, *_]] = json.loads((cache / f"{made['first']['id']}.json").read_text())["sources"]
    assert [s[0] for s in json.loads(
        (cache / f"{made['both']['id']}.json").read_text())["sources"]][0] == first

    deleted = httpx.delete(f"{server.url}/api/recordings/cam/{first}", timeout=10)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["message"] == f"Recording '{first}' deleted, with 2 clip(s) made from it"
    for label in ("first", "both"):
        clip = made[label]
        assert httpx.get(f"{server.url}/api/clips/{clip['id']}", timeout=10).status_code == 404
        gone = httpx.get(f"{server.url}{clip['url']}", timeout=10)
        assert gone.status_code == 404 and gone.json()["error"] == "not_found"
        assert not list(cache.glob(f"{clip['id']}.*"))
    kept = httpx.get(f"{server.url}{made['second']['url']}", timeout=10)
    assert kept.status_code == 200 and kept.headers["content-type"] == "video/mp4"
    # Asked again, the range has one segment left: another clip, made from it alone.
    again = httpx.post(f"{server.url}/api/clips", json={
        "stream": "cam", "start": ranges["both"][0], "end": ranges["both"][1]}, timeout=10)
    assert again.status_code == 202 and again.json()["id"] not in (made["both"]["id"],
                                                                    made["second"]["id"])
    assert _wait_done(server.url, again.json())[0]["frames_total"] == 4

    # A clip being made when its recording is deleted is not kept, whenever the delete
    # lands (before the job ends: it fails; after: the cached clip goes).
    _publish(server.url, "long", 120, BIG, pause=0)
    _close(server.url, "long")
    wait_closed(server.recordings, "long", count=1)
    [long] = server.recordings.joinpath("long").glob("*.mp4")
    asked = httpx.post(f"{server.url}/api/clips", timeout=10, json={
        "stream": "long", "start": time.time() - 60, "end": time.time() + 1})
    assert asked.status_code == 202, asked.text
    job = asked.json()
    assert httpx.delete(f"{server.url}/api/recordings/long/{long.name}",
                        timeout=10).status_code == 200

    def ended():
        state = httpx.get(f"{server.url}/api/clips/{job['id']}", timeout=10)
        if state.status_code == 404 or state.json()["status"] in ("failed", "ready"):
            return state
        return None

    state = wait_for(ended, timeout=60, what="the clip job to end")
    assert state.status_code == 404 or state.json()["status"] == "failed", state.text
    assert httpx.get(f"{server.url}{job['url']}", timeout=10).status_code in (404, 409)
    assert not list(cache.glob(f"{job['id']}.*"))
