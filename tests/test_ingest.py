"""Long-lived ingest against a real server: chunked multipart POST, real ffmpeg, WebSocket."""

import signal
import subprocess

import httpx
import pytest
import requests
import simplejpeg
from helpers import iter_parts, make_jpeg, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

FRAMES = [make_jpeg(seed=i) for i in range(6)]


def parts(*jpegs: bytes, boundary: str = "frame") -> bytes:
    return b"".join(
        b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
        % (boundary.encode(), len(j), j)
        for j in jpegs
    )


def chunked(*pieces: bytes):
    """A generator body: requests sends it with Transfer-Encoding: chunked."""
    yield from pieces


def stats(server, name: str) -> dict:
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=5).json()


def test_chunked_multipart_post_publishes_every_part(shared_server):
    server = shared_server
    response = requests.post(
        f"{server.url}/publish/multi",
        data=chunked(*(parts(j) for j in FRAMES[:5])),
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "success", "stream": "multi", "frames": 5, "bytes": sum(map(len, FRAMES[:5]))
    }
    assert stats(server, "multi")["total_frames"] == 5
    assert httpx.get(f"{server.url}/snapshot/multi").content == FRAMES[4]


@pytest.mark.parametrize("origin", [None, "http://example.test"], ids=["plain", "cors"])
def test_parts_split_anywhere_across_chunks_publish_the_same_frames(shared_server, origin):
    server = shared_server
    # Parts must be cut the same way whatever the chunk boundaries: here every piece
    # is 1,000 bytes; a browser's CORS request takes the same path.
    body = parts(*FRAMES[:5])
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    headers = {"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
    if origin:
        headers["Origin"] = origin
    name = "split_cors" if origin else "split"
    response = requests.post(
        f"{server.url}/publish/{name}", data=chunked(*pieces), headers=headers, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["frames"] == 5
    assert httpx.get(f"{server.url}/snapshot/{name}").content == FRAMES[4]
    assert stats(server, name)["total_frames"] == 5


def test_a_body_without_content_type_is_sniffed(shared_server):
    server = shared_server
    # A raw JPEG (starts \xff\xd8) is one frame, answered like any single POST...
    single = httpx.post(f"{server.url}/publish/sniff", content=FRAMES[0])
    assert single.status_code == 200
    assert single.json()["frame_size"] == len(FRAMES[0])
    # ...and a body starting "--boundary" is a multipart stream, as ffmpeg sends it.
    multi = httpx.post(f"{server.url}/publish/sniff", content=parts(*FRAMES[1:4], boundary="ffmpeg"))
    assert multi.status_code == 200
    assert multi.json()["frames"] == 3
    assert stats(server, "sniff")["total_frames"] == 4


def test_a_corrupt_part_ends_the_connection_and_keeps_the_frames_before_it(shared_server):
    server = shared_server
    truncated = FRAMES[3][:-200]
    response = requests.post(
        f"{server.url}/publish/corrupt",
        data=chunked(parts(*FRAMES[:3]), parts(truncated), parts(FRAMES[4])),
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.headers["connection"] == "close"  # the rest of the body is not read
    body = response.json()
    assert body["status"] == "error"
    assert body["error"] == "truncated_jpeg"
    assert "frame 4" in body["message"] and "3 frame(s) before it" in body["message"]
    assert stats(server, "corrupt")["total_frames"] == 3
    assert httpx.get(f"{server.url}/snapshot/corrupt").content == FRAMES[2]


def test_multipart_parts_obey_the_frame_size_limit(start_server):
    server = start_server({"server": {"max_frame_size_mb": 0.01}})  # ≈10 KB
    big = make_jpeg(640, 480, quality=95)
    assert len(big) > 10_486
    response = httpx.post(
        f"{server.url}/publish/limited",
        content=parts(FRAMES[0], big),
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "frame_too_large"
    assert stats(server, "limited")["total_frames"] == 1, (response.text, server.output())


def test_a_malformed_multipart_body_is_refused_with_a_reason(shared_server):
    server = shared_server
    response = httpx.post(
        f"{server.url}/publish/garbage",
        content=b"not a multipart body at all",
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_multipart"
    assert "--boundary" in response.json()["message"]


def test_real_ffmpeg_publishes_and_a_viewer_receives_its_frames(shared_server):
    server = shared_server
    name = "ffmpeg_cam"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", "testsrc=size=320x240:rate=15", "-f", "mpjpeg", "-method", "POST",
         f"{server.url}/publish/{name}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: httpx.get(f"{server.url}/api/streams/{name}/stats").status_code == 200)
        received = []
        with httpx.stream("GET", f"{server.url}/stream/{name}", timeout=10) as response:
            for _, jpeg in iter_parts(response.iter_raw()):
                received.append(jpeg)
                if len(received) == 5:
                    break
        for jpeg in received:
            assert simplejpeg.decode_jpeg_header(jpeg)[:2] == (240, 320)
        assert len(set(received)) >= 4  # a moving test pattern: new frames, not repeats
    finally:
        ffmpeg.send_signal(signal.SIGINT)  # like Ctrl-C: ffmpeg stops mid-stream
        try:
            _, err = ffmpeg.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            ffmpeg.kill()
            _, err = ffmpeg.communicate()
    assert ffmpeg.returncode in (0, 255), err
    # The frames sent before the interruption stay published.
    published = stats(server, name)
    assert published["total_frames"] >= 5
    assert published["has_current_frame"]
    assert httpx.get(f"{server.url}/snapshot/{name}").status_code == 200


def test_websocket_binary_messages_are_frames(shared_server):
    server = shared_server
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/wscam") as ws:
        for jpeg in FRAMES:
            ws.send(jpeg)
    wait_for(lambda: stats(server, "wscam")["total_frames"] == len(FRAMES))
    assert httpx.get(f"{server.url}/snapshot/wscam").content == FRAMES[-1]


def _close_of(url: str, *messages) -> tuple[int, str]:
    with connect(url) as ws:
        # The server may close while messages after the refused one are still being sent.
        with pytest.raises(ConnectionClosed) as info:
            for message in messages:
                ws.send(message)
            ws.recv(timeout=10)
    return info.value.rcvd.code, info.value.rcvd.reason


def test_websocket_refusals_close_with_a_code_and_reason(start_server):
    server = start_server({"server": {"max_frame_size_mb": 0.01}})
    base = f"ws://127.0.0.1:{server.port}/ws/publish"
    code, reason = _close_of(f"{base}/wsbad", FRAMES[0], FRAMES[1], FRAMES[2][:-100])
    assert code == 1007 and reason.startswith("truncated_jpeg: frame 3")
    assert stats(server, "wsbad")["total_frames"] == 2
    code, reason = _close_of(f"{base}/wsbad", "a text message")
    assert code == 1003 and "binary" in reason
    # A text message among frames ends the connection: the frame before it stays, the
    # frames after it are not published.
    code, reason = _close_of(f"{base}/wstext", FRAMES[0], "text", FRAMES[1], FRAMES[2])
    assert code == 1003 and "binary" in reason
    assert stats(server, "wstext")["total_frames"] == 1
    code, reason = _close_of(f"{base}/wsbad", make_jpeg(640, 480, quality=95))
    assert code == 1009 and reason.startswith("frame_too_large")
    code, reason = _close_of(f"{base}/bad.name")
    assert code == 1008 and reason.startswith("invalid_stream_name")
    assert stats(server, "wsbad")["total_frames"] == 2


def test_long_lived_ingest_obeys_the_stream_limit(start_server):
    server = start_server({"streams": {"max_concurrent": 1}})
    assert httpx.post(f"{server.url}/publish/first", content=FRAMES[0]).status_code == 200
    response = httpx.post(
        f"{server.url}/publish/second",
        content=parts(FRAMES[1]),
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
    )
    assert response.status_code == 503
    assert response.json()["error"] == "stream_limit_reached"
    assert response.headers["retry-after"] == "10"
    # refused as soon as it connects, before any frame is sent
    code, reason = _close_of(f"ws://127.0.0.1:{server.port}/ws/publish/second")
    assert code == 1013 and reason.startswith("stream_limit_reached")
    # The existing stream still takes long-lived ingest.
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/first") as ws:
        ws.send(FRAMES[2])
    wait_for(lambda: stats(server, "first")["total_frames"] == 2)


def test_a_connected_publisher_holds_no_stream_until_its_first_frame(start_server):
    """A WebSocket that connects and sends nothing used to create a stream that lived
    streams.timeout_seconds, taking a slot: the stream exists from its first frame."""
    server = start_server({"streams": {"max_concurrent": 1}})
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/squatter"):
        # Another publisher still gets the only slot while the first sends nothing.
        assert httpx.post(f"{server.url}/publish/real", content=FRAMES[0]).status_code == 200
        assert httpx.get(f"{server.url}/api/streams/squatter/stats").status_code == 404
        assert httpx.get(f"{server.url}/stream/squatter").status_code == 404
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/real") as ws:
        ws.send(FRAMES[1])
        wait_for(lambda: stats(server, "real")["total_frames"] == 2)
    names = [s["name"] for s in httpx.get(f"{server.url}/api/streams").json()["streams"]]
    assert names == ["real"]


def test_each_refusal_has_its_close_code():
    """A WebSocket refused because the server is stopping is told "going away" (1001),
    not "invalid payload" (1007)."""
    from robogpt_video.errors import ApiError, FrameTooLarge, InvalidFrame, StreamLimitReached
    from robogpt_video.web.ingest import _close_code

    assert _close_code(ApiError("stopping", code="shutting_down", status_code=503)) == 1001
    assert _close_code(StreamLimitReached("full")) == 1013
    assert _close_code(FrameTooLarge("big")) == 1009
    assert _close_code(ApiError("bad", code="invalid_stream_name")) == 1008
    assert _close_code(InvalidFrame("not a jpeg", code="not_jpeg")) == 1007
