"""Viewers get each frame written straight to their transport, by the paths we count.

Every MJPEG viewer is written to directly (web/mjpeg.py): exactly one whole part per
HTTP/1.1 chunk, the last chunk at the end. The fast paths must be the ones taken, and
each test here fails when its path is not: ``publish`` writing to an idle viewer itself
(``frames_pushed``), ``writev`` of the shared pieces, ``sendfile`` from one memfd per
frame for wide fan-out (``robogpt_video_viewer_writes_total{method=...}``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx

from helpers import iter_parts, make_jpeg, publish, wait_for
from robogpt_video.web.mjpeg import SENDFILE_VIEWERS


def stats(server, name="cam") -> dict:
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=10).json()


def by_label(server, metric: str, label: str) -> dict[str, float]:
    """The samples of a one-label counter from /metrics, by the label's value."""
    found = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(metric + "{"):
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            found[value] = float(line.rsplit(" ", 1)[1])
    return found


def viewer_writes(server) -> dict[str, float]:
    """``robogpt_video_viewer_writes_total`` by method."""
    return by_label(server, "robogpt_video_viewer_writes_total", "method")


class RawChunks:
    """An HTTP/1.1 GET on a plain socket, its chunked body decoded by hand."""

    def __init__(self, port: int, path: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n").decode("latin-1").lower()
        self.status_line, *lines = head.split("\r\n")
        self.headers = dict(line.split(": ", 1) for line in lines)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            data = self.sock.recv(65536)
            assert data, f"connection closed before {marker!r}"
            self.buf += data
        item, self.buf = self.buf.split(marker, 1)
        return item

    def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            data = self.sock.recv(65536)
            assert data, "connection closed mid-chunk"
            self.buf += data
        item, self.buf = self.buf[:size], self.buf[size:]
        return item

    def chunk(self) -> bytes:
        """The next chunk's data (b"" for the last chunk), checking its framing."""
        size = int(self._until(b"\r\n"), 16)
        data = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return data

    def close(self) -> None:
        self.sock.close()


def test_plain_viewer_gets_one_whole_part_per_chunk_written_directly(server):
    jpegs = [make_jpeg(seed=s) for s in range(4)]
    publish(server.url, "cam", jpegs[0])
    raw = RawChunks(server.port, "/stream/cam")
    try:
        assert raw.status_line == "http/1.1 200 ok"
        assert raw.headers["transfer-encoding"] == "chunked"
        got = [raw.chunk()]
        for jpeg in jpegs[1:]:
            publish(server.url, "cam", jpeg)
            got.append(raw.chunk())
        during = stats(server)
        httpx.delete(f"{server.url}/api/streams/cam", timeout=10).raise_for_status()
        assert raw.chunk() == b""  # the last chunk: the response completed properly
    finally:
        raw.close()
    for chunk, jpeg in zip(got, jpegs):
        parts = list(iter_parts([chunk]))
        assert len(parts) == 1 and parts[0][1] == jpeg
        assert chunk.startswith(b"--frame\r\n") and chunk.endswith(jpeg + b"\r\n")
    # The viewer was idle at each publish: publish wrote every new frame itself.
    assert during["frames_out"] == 4 and during["frames_pushed"] == 3, during
    assert viewer_writes(server)["writev"] >= 4
    assert "ERROR" not in server.output()


def test_many_viewers_share_frames_byte_for_byte(server):
    jpegs = [make_jpeg(640, 480, seed=s) for s in range(3)]
    publish(server.url, "cam", jpegs[0])
    viewers = [RawChunks(server.port, "/stream/cam") for _ in range(5)]
    try:
        firsts = [viewer.chunk() for viewer in viewers]
        for jpeg in jpegs[1:]:
            publish(server.url, "cam", jpeg)
            got = {viewer.chunk() for viewer in viewers}
            assert len(got) == 1 and list(iter_parts(got))[0][1] == jpeg
        assert stats(server)["frames_pushed"] == 5 * 2
    finally:
        for viewer in viewers:
            viewer.close()
    assert len(set(firsts)) == 1 and list(iter_parts(firsts[:1]))[0][1] == jpegs[0]


def test_cors_and_http10_viewers_take_the_same_path(server):
    jpegs = [make_jpeg(seed=s) for s in range(10, 13)]
    publish(server.url, "cam", jpegs[0])
    origin = {"origin": "http://example.test"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/stream/cam", headers=origin) as response:
            assert response.headers["access-control-allow-origin"] == "*"
            parts = iter_parts(response.iter_bytes())
            got = [next(parts)[1]]
            for jpeg in jpegs[1:]:
                publish(server.url, "cam", jpeg, client)
                got.append(next(parts)[1])
    assert got == jpegs
    # HTTP/1.0 has no chunks: the parts follow one another and the connection closes.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(b"GET /stream/cam HTTP/1.0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200") and b"transfer-encoding" not in head.lower()
        before = stats(server)["frames_pushed"]
        publish(server.url, "cam", jpegs[0])
        while len(list(iter_parts([body]))) < 2:
            body += sock.recv(65536)
        assert [jpeg for _, jpeg in iter_parts([body])] == [jpegs[-1], jpegs[0]]
        assert stats(server)["frames_pushed"] == before + 1
        httpx.delete(f"{server.url}/api/streams/cam", timeout=10).raise_for_status()
        while chunk := sock.recv(65536):  # the server closes the connection at the end
            body += chunk
    finally:
        sock.close()


def memfds(server) -> list[str]:
    """The frame memfds the server process has open right now."""
    fd_dir = Path(f"/proc/{server.proc.pid}/fd")
    found = []
    for link in fd_dir.iterdir():
        try:
            target = os.readlink(link)
        except OSError:  # closed while listing
            continue
        if "robogpt-frame" in target:
            found.append(target)
    return found


def test_wide_fan_out_sends_from_one_memfd_per_stream_byte_for_byte(server):
    # SENDFILE_VIEWERS or more viewers: chunks leave through os.sendfile from the
    # frame's memfd. Each viewer must still get exactly one whole part per chunk.
    sent_before = viewer_writes(server)["sendfile"]
    jpegs = [make_jpeg(640, 480, seed=s) for s in range(20, 26)]
    publish(server.url, "wide", jpegs[0])
    viewers = [RawChunks(server.port, "/stream/wide") for _ in range(SENDFILE_VIEWERS + 2)]
    try:
        for viewer in viewers:
            assert list(iter_parts([viewer.chunk()]))[0][1] == jpegs[0]
        open_files = []
        for jpeg in jpegs[1:]:
            publish(server.url, "wide", jpeg)
            open_files.append(len(memfds(server)))
            got = {viewer.chunk() for viewer in viewers}
            assert len(got) == 1 and list(iter_parts(got))[0][1] == jpeg
        assert max(open_files) == 1  # only the latest frame keeps its file
        assert viewer_writes(server)["sendfile"] - sent_before >= 5 * len(viewers)
        httpx.delete(f"{server.url}/api/streams/wide", timeout=10).raise_for_status()
        for viewer in viewers:
            assert viewer.chunk() == b""
    finally:
        for viewer in viewers:
            viewer.close()
    wait_for(lambda: not memfds(server), what="the stream's memfd to be closed")


def test_viewer_that_stops_reading_gets_whole_parts_when_it_reads_again(server):
    # 1280x720 parts are larger than what the socket takes at once, so sendfile sends
    # part of a chunk and the transport queues the rest; a reader that pauses must
    # still see whole, valid parts, the newest ones, with no torn chunk between.
    jpegs = [make_jpeg(1280, 720, seed=s, quality=95) for s in range(30, 42)]
    assert len(jpegs[0]) > 128 * 1024
    publish(server.url, "big", jpegs[0])
    fast = [RawChunks(server.port, "/stream/big") for _ in range(SENDFILE_VIEWERS)]
    slow = RawChunks(server.port, "/stream/big")
    try:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        for viewer in fast:
            viewer.chunk()
        with httpx.Client(timeout=10) as client:
            for jpeg in jpegs[1:]:
                publish(server.url, "big", jpeg, client)
                for viewer in fast:
                    assert list(iter_parts([viewer.chunk()]))[0][1] == jpeg
        # The slow viewer read nothing so far; now it reads until the newest frame.
        seen = []
        while not seen or seen[-1] != jpegs[-1]:
            parts = list(iter_parts([slow.chunk()]))
            assert len(parts) == 1
            assert parts[0][1] in jpegs
            seen.append(parts[0][1])
        assert seen[0] == jpegs[0]
        indexes = [jpegs.index(jpeg) for jpeg in seen]
        assert indexes == sorted(indexes) and len(seen) < len(jpegs)  # it skipped some
        assert stats(server, "big")["frames_dropped_slow_viewers"] > 0
    finally:
        for viewer in [*fast, slow]:
            viewer.close()


def viewer_sockets(server) -> dict[str, float]:
    """``robogpt_video_viewer_sockets_total`` by whether TCP_NOTSENT_LOWAT is on."""
    return by_label(server, "robogpt_video_viewer_sockets_total", "notsent_lowat")


def test_viewer_sockets_hold_little_unsent_data(server):
    # A viewer's socket takes writes only while little of what it holds is unsent
    # (TCP_NOTSENT_LOWAT), so a slow link keeps the backlog in the transport, where the
    # sink sees it and skips frames. Every viewer socket must get it, and say so.
    assert viewer_sockets(server) == {"on": 0, "off": 0}
    publish(server.url, "cam", make_jpeg())
    viewers = [RawChunks(server.port, "/stream/cam") for _ in range(2)]
    try:
        for viewer in viewers:
            viewer.chunk()
        assert viewer_sockets(server) == {"on": 2, "off": 0}
    finally:
        for viewer in viewers:
            viewer.close()


def frames_in(server) -> dict[str, float]:
    """``robogpt_video_frames_in_total`` by ingest kind."""
    return by_label(server, "robogpt_video_frames_in_total", "via")


def test_every_ingest_kind_is_counted(server):
    from websockets.sync.client import connect

    jpegs = [make_jpeg(seed=s) for s in range(50, 55)]
    assert frames_in(server) == {"post": 0, "mpjpeg": 0, "websocket": 0}
    publish(server.url, "post_cam", jpegs[0])
    mixed = b"".join(
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(j), j)
        for j in jpegs[1:3]
    )
    answer = httpx.post(f"{server.url}/publish/mp_cam", content=mixed, timeout=10,
                        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"})
    assert answer.json()["frames"] == 2
    with connect(f"ws://127.0.0.1:{server.port}/ws/publish/ws_cam") as ws:
        for jpeg in jpegs[3:]:
            ws.send(jpeg)
    wait_for(lambda: frames_in(server)["websocket"] == 2, what="two WebSocket frames counted")
    assert frames_in(server) == {"post": 1, "mpjpeg": 2, "websocket": 2}
