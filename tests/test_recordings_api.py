"""The recordings API on a real server: list, download with Range, delete, replay."""

import time

import httpx

from helpers import iter_parts, wait_for
from recording_tools import decode, publish_paced, wait_closed


def _close_stream(server, name):
    assert httpx.delete(f"{server.url}/api/streams/{name}").status_code == 200


def _recording(server, name):
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=10).json()["recording"]


def test_list_filter_download_and_delete(server):
    publish_paced(server.url, "done", [0.05] * 6)
    _close_stream(server, "done")
    wait_closed(server.recordings, "done")
    time.sleep(1.1)  # the open one starts a second later: a distinct, newer name
    publish_paced(server.url, "live", [0.05] * 4)
    # The writer thread opens the segment some time after the frames were accepted (on a
    # busy machine the listing could see the new file before it was marked open); once
    # the frames are counted as written, the segment is open and has its sidecar.
    wait_for(lambda: _recording(server, "live")["frames_written"] == 4, what="live recorded")
    api = f"{server.url}/api/recordings"

    listing = httpx.get(api).json()
    assert listing["count"] == 2
    newest, oldest = listing["recordings"]
    assert (newest["stream_name"], newest["status"], newest["open"]) == ("live", "recording", True)
    assert (oldest["stream_name"], oldest["status"]) == ("done", "complete")
    assert oldest["total_frames"] == 6
    video = server.recordings / "done" / oldest["file"]
    assert oldest["size_bytes"] == video.stat().st_size

    only = httpx.get(api, params={"stream": "done"}).json()["recordings"]
    assert [r["stream_name"] for r in only] == ["done"]
    assert httpx.get(api, params={"since": "2999-01-01T00:00:00Z"}).json()["count"] == 0
    assert httpx.get(api, params={"until": "2000-01-01T00:00:00Z"}).json()["count"] == 0
    span = {"since": oldest["start_time"], "until": oldest["end_time"]}
    assert "done" in [r["stream_name"] for r in httpx.get(api, params=span).json()["recordings"]]
    bad = httpx.get(api, params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_time"
    assert httpx.get(api, params={"stream": "../etc"}).status_code == 400

    url = f"{server.url}{oldest['download_url']}"
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == video.read_bytes()
    assert whole.headers["content-type"] == "video/mp4"
    head = httpx.head(url)  # players ask for the size first
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == video.stat().st_size
    part = httpx.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1123/{video.stat().st_size}"
    assert part.content == video.read_bytes()[100:1124]
    size = video.stat().st_size
    for range_, status, code in ((f"bytes={size}-", 416, "range_not_satisfiable"),
                                 ("bytes=abc", 400, "invalid_range")):
        bad = httpx.get(url, headers={"Range": range_})
        assert (bad.status_code, bad.json()["error"]) == (status, code), range_
        assert bad.headers["content-type"] == "application/json"
    assert httpx.get(url, headers={"Range": f"bytes={size}-"}).headers["content-range"] == f"bytes */{size}"
    bad_head = httpx.head(url, headers={"Range": f"bytes={size}-"})
    assert bad_head.status_code == 416 and bad_head.content == b""
    assert httpx.get(f"{server.url}{oldest['sidecar_url']}").json()["total_frames"] == 6

    in_use = httpx.delete(f"{server.url}{newest['download_url']}")
    assert in_use.status_code == 409 and in_use.json()["error"] == "recording_in_use"
    gone = httpx.delete(url)
    assert gone.status_code == 200 and gone.json()["status"] == "success"
    assert not video.exists() and not video.with_suffix(".json").exists()
    assert httpx.get(url).json()["error"] == "not_found"
    assert httpx.get(f"{server.url}/api/recordings/done/notes.txt").status_code == 404


def test_play_replays_the_recorded_frames_at_their_timing(server):
    jpegs, covered = publish_paced(server.url, "cam", [0.1] * 10)
    _close_stream(server, "cam")
    [meta] = wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    url = f"{server.url}/api/recordings/cam/{video.name}/play"
    started = time.monotonic()
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        parts = list(iter_parts(response.iter_bytes()))
    elapsed = time.monotonic() - started
    assert [body for _, body in parts] == jpegs == decode(video).packets
    stamps = [float(headers["x-timestamp"]) for headers, _ in parts]
    assert stamps == sorted(stamps)
    assert elapsed >= 0.8 * (covered - 0.1)  # paced like the original, not dumped at once


def test_play_of_a_transcoded_recording_sends_jpegs(start_server):
    server = start_server({"recording": {"codec": "h264"}})
    publish_paced(server.url, "cam", [0.05] * 6)
    _close_stream(server, "cam")
    wait_closed(server.recordings, "cam")
    [video] = server.recordings.glob("cam/*.mp4")
    with httpx.stream("GET", f"{server.url}/api/recordings/cam/{video.name}/play") as response:
        parts = list(iter_parts(response.iter_bytes()))
    assert len(parts) == 6
    assert all(body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9" for _, body in parts)


def test_a_malformed_sidecar_never_breaks_the_listing(server):
    publish_paced(server.url, "good", [0.05] * 3)
    wait_for(lambda: _recording(server, "good")["frames_written"] == 3, what="good recorded")
    folder = server.recordings / "odd"
    folder.mkdir(parents=True)
    (folder / "odd_20260101_000000.mp4").write_bytes(b"\0" * 64)
    (folder / "odd_20260101_000000.json").write_text(
        '{"start_time": 12345, "end_time": [], "status": 7, "total_frames": 1}'
    )
    (folder / "odd_20260102_000000.mp4").write_bytes(b"\0" * 64)
    (folder / "odd_20260102_000000.json").write_text('["not", "an", "object"]')
    response = httpx.get(f"{server.url}/api/recordings", timeout=10)
    assert response.status_code == 200, response.text
    by_file = {r["file"]: r for r in response.json()["recordings"]}
    first = by_file["odd_20260101_000000.mp4"]
    assert (first["start_time"], first["end_time"], first["status"]) == (
        "2026-01-01T00:00:00Z", None, "unknown")
    assert by_file["odd_20260102_000000.mp4"]["status"] == "unknown"
    assert any(r["stream_name"] == "good" for r in by_file.values())
    since = httpx.get(f"{server.url}/api/recordings", params={"since": "2025-12-31T00:00:00Z"})
    assert since.status_code == 200
