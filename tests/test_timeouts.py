"""Connection and body timeouts on a real server with short settings (issue 13, finding 3).

Header, body and keep-alive timeouts are 1 s here and a stream counts as inactive
after 3 s, so every case ends within seconds. Closures are awaited by blocking on
socket reads with a generous timeout (``BOUND``); nothing asserts how fast they came.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import ServerProcess, iter_parts, make_jpeg, wait_for

BOUND = 15.0  # seconds: a generous upper bound for anything the server should do
TIMEOUT = 1.0  # header, body and keep-alive timeouts of the server under test
IDLE = 3.0  # streams.timeout_seconds: how long a long-lived publisher may pause
CONFIG = {
    "server": {
        "header_timeout_seconds": TIMEOUT,
        "body_timeout_seconds": TIMEOUT,
        "keepalive_timeout_seconds": TIMEOUT,
    },
    "streams": {"timeout_seconds": IDLE},
    "cleanup": {"interval_seconds": 3600},  # no inactive-stream sweep during the tests
}
FRAMES = [make_jpeg(seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with short timeouts for the module; tests use their own stream names
    and compare metrics before and after."""
    server = ServerProcess(tmp_path_factory.mktemp("timeouts"), CONFIG)
    try:
        yield server.start()
    finally:
        server.stop()


def timed_out(server, timeout: str) -> float:
    """``robogpt_video_connections_timed_out_total{timeout=...}``."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    prefix = f'robogpt_video_connections_timed_out_total{{timeout="{timeout}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"no {prefix.strip()} in /metrics")


def connect_raw(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(BOUND)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout after ``BOUND``)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response with a Content-Length: status, headers, body; the socket stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def parse_response(data: bytes) -> tuple[int, dict, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def total_frames(server, name: str) -> int | None:
    response = httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=5)
    return response.json()["total_frames"] if response.status_code == 200 else None


def part(jpeg: bytes) -> bytes:
    return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked request body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


MPJPEG_HEAD = (
    b"POST /publish/%s HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


# -- header timeout ---------------------------------------------------------------------


def test_a_connection_that_sends_nothing_gets_a_408_and_is_closed(server):
    before = timed_out(server, "header")
    with connect_raw(server) as sock:
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"] == "request_timeout"
    assert "server.header_timeout_seconds" in body["message"]
    assert timed_out(server, "header") == before + 1


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout(server):
    """Slowloris: each byte well within the timeout of the one before, the head never
    complete. The header timeout counts from the connection, not from the last byte."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: slowloris\r\n" * 20
    received = b""
    sent = 0
    closed = False
    deadline = time.monotonic() + BOUND
    with connect_raw(server) as sock:
        sock.settimeout(TIMEOUT / 4)  # paces the bytes: one per quarter of the timeout
        while not closed and sent < len(head) and time.monotonic() < deadline:
            try:
                sock.sendall(head[sent : sent + 1])
                sent += 1
                while data := sock.recv(65536):  # the answer, until the server closes
                    received += data
                closed = True
            except socket.timeout:
                continue  # nothing yet: the next byte
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed and sent < len(head), f"not cut: {sent} of {len(head)} bytes sent"
    status, _, body = parse_response(received)
    assert (status, body["error"]) == (408, "request_timeout")


# -- body timeout -----------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_gets_a_408_and_nothing_is_published(server):
    before = timed_out(server, "body")
    with connect_raw(server) as sock:
        sock.sendall(
            b"POST /publish/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + FRAMES[0][:10]
        )
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"] == "request_timeout"
    assert "server.body_timeout_seconds" in body["message"]
    assert "10 bytes of the 100000 announced" in body["message"]
    assert total_frames(server, "stalled") is None
    assert timed_out(server, "body") == before + 1


@pytest.mark.parametrize("content_type", [b"image/jpeg", b""], ids=["jpeg", "sniffed"])
def test_a_slow_body_that_keeps_coming_is_read_whole(server, content_type):
    """The body timeout is the time without a byte, not the time of the whole body."""
    jpeg = FRAMES[1]
    name = b"slow_" + (content_type.split(b"/")[-1] or b"sniffed")
    pieces = [jpeg[i : i + len(jpeg) // 6 + 1] for i in range(0, len(jpeg), len(jpeg) // 6 + 1)]
    header = b"Content-Type: %s\r\n" % content_type if content_type else b""
    with connect_raw(server) as sock:
        sock.sendall(b"POST /publish/%s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
                     % (name, header, len(jpeg)))
        sock.settimeout(TIMEOUT / 2)
        for piece in pieces[:-1]:  # 7 pieces, half the timeout apart: longer than the timeout
            sock.sendall(piece)
            with pytest.raises(socket.timeout):
                sock.recv(1)  # no answer yet, and not closed
        sock.settimeout(BOUND)
        sock.sendall(pieces[-1])
        status, _, body = read_response(sock)
    assert status == 200, body
    assert json.loads(body)["frame_size"] == len(jpeg)


# -- long-lived mpjpeg ingest -----------------------------------------------------------


def test_an_mpjpeg_publisher_may_pause_between_frames_longer_than_the_body_timeout(server):
    with connect_raw(server) as sock:
        sock.sendall(MPJPEG_HEAD % b"pausing" + chunk(part(FRAMES[0]) + part(FRAMES[1])))
        wait_for(lambda: total_frames(server, "pausing") == 2, what="2 frames")
        sock.settimeout(2 * TIMEOUT)  # a camera pauses for twice the body timeout
        with pytest.raises(socket.timeout):
            sock.recv(1)  # no answer, not closed
        sock.settimeout(BOUND)
        sock.sendall(chunk(part(FRAMES[2])) + chunk(b"--frame--\r\n") + b"0\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200, body
    assert json.loads(body)["frames"] == 3


def test_an_mpjpeg_publisher_quiet_for_the_stream_timeout_is_ended_and_keeps_its_frames(server):
    before = timed_out(server, "idle")
    with connect_raw(server) as sock:
        sock.sendall(MPJPEG_HEAD % b"gone_quiet" + chunk(part(FRAMES[0]) + part(FRAMES[1])))
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"] == "request_timeout"
    assert "streams.timeout_seconds" in body["message"]
    assert "2 frame(s) before it were published" in body["message"]
    assert total_frames(server, "gone_quiet") == 2
    assert httpx.get(f"{server.url}/snapshot/gone_quiet", timeout=5).content == FRAMES[1]
    assert timed_out(server, "idle") == before + 1


@pytest.mark.parametrize("boundary_after", [False, True], ids=["boundary_before", "ffmpeg"])
def test_an_mpjpeg_part_that_stops_midway_ends_at_the_body_timeout(server, boundary_after):
    """ffmpeg writes the boundary line after each frame, our publisher before it; either
    way a part that stops arriving is cut at the body timeout, the frames before kept."""
    name = b"midway_ffmpeg" if boundary_after else b"midway"
    if boundary_after:  # --frame, then per frame: headers, JPEG, \r\n--frame\r\n
        whole = b"".join(
            b"Content-type: image/jpeg\r\nContent-length: %d\r\n\r\n%s\r\n--frame\r\n" % (len(j), j)
            for j in FRAMES[:2]
        )
        sent = b"--frame\r\n" + whole + b"Content-type: image/jpeg\r\nContent-length: %d\r\n\r\n" % len(
            FRAMES[2]) + FRAMES[2][:100]
    else:
        sent = part(FRAMES[0]) + part(FRAMES[1]) + part(FRAMES[2])[:150]
    before = timed_out(server, "body")
    with connect_raw(server) as sock:
        sock.sendall(MPJPEG_HEAD % name + chunk(sent))
        status, headers, body = parse_response(read_until_closed(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"] == "request_timeout"
    assert "part 3" in body["message"] and "server.body_timeout_seconds" in body["message"]
    assert "2 frame(s) before it were published" in body["message"]
    assert total_frames(server, name.decode()) == 2
    assert timed_out(server, "body") == before + 1


# -- WebSocket ingest -------------------------------------------------------------------


def test_a_quiet_websocket_publisher_that_answers_pings_is_closed_after_the_stream_timeout(server):
    """The heartbeat (a ping after the body timeout) keeps a live publisher; one that
    sends no frame for streams.timeout_seconds is closed with 4408, its frames kept."""
    before = timed_out(server, "idle")
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/ws_quiet") as ws:  # answers pings
        ws.send(FRAMES[0])
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=BOUND)
    assert closed.value.rcvd is not None, "closed without a close frame (the heartbeat's way)"
    assert closed.value.rcvd.code == 4408
    assert closed.value.rcvd.reason.startswith("request_timeout: no frame for 3 s")
    assert total_frames(server, "ws_quiet") == 1
    assert timed_out(server, "idle") == before + 1


def test_a_websocket_publisher_that_answers_no_ping_is_closed(server):
    """A dead link, or a frame stopped midway: the ping after the body timeout gets no
    pong, and the connection is closed."""
    before = timed_out(server, "body")
    key = base64.b64encode(os.urandom(16))
    with connect_raw(server) as sock:
        sock.sendall(
            b"GET /ws/publish/ws_dead HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % key
        )
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 101")
    frames = data.partition(b"\r\n\r\n")[2]
    assert frames[:1] == b"\x89", f"expected a ping frame first, got {frames[:16]!r}"
    wait_for(lambda: timed_out(server, "body") == before + 1, what="the timeout counted")


# -- what the timeouts leave alone --------------------------------------------------------


def test_a_viewer_of_a_quiet_stream_is_not_cut(server):
    """A viewer sends nothing after its request and the stream sends a frame a second:
    no timeout applies while its response lasts (its own stall detector does)."""
    assert httpx.post(f"{server.url}/publish/quiet_view", content=FRAMES[3],
                      headers={"Content-Type": "image/jpeg"}, timeout=5).status_code == 200
    seen = 0
    with httpx.stream("GET", f"{server.url}/stream/quiet_view", timeout=BOUND) as response:
        assert response.status_code == 200
        for _headers, jpeg in iter_parts(response.iter_bytes()):
            assert jpeg == FRAMES[3]
            seen += 1
            if seen == 5:  # the first, then a re-send each second: past every timeout
                break
    assert seen == 5


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(server):
    before = timed_out(server, "keepalive")
    with connect_raw(server) as sock:
        for _ in range(2):  # kept alive between requests that follow each other
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection", "").lower() != "close"
        assert read_until_closed(sock) == b""  # then closed quietly, no answer
    assert timed_out(server, "keepalive") == before + 1
