"""Viewers under uvicorn get pre-framed chunks written straight to the transport.

The direct path (web/chunks.py) must be what a plain viewer actually gets, must put
exactly one whole MJPEG part in each HTTP/1.1 chunk and end with the last chunk; a
viewer whose ``send`` is wrapped (CORS requests) must fall back to ASGI ``send``.
"""

from __future__ import annotations

import socket

import httpx

from helpers import iter_parts, make_jpeg, publish


def stats(server, name="cam") -> dict:
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=10).json()


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
        assert stats(server)["direct_viewers"] == 1
        for jpeg in jpegs[1:]:
            publish(server.url, "cam", jpeg)
            got.append(raw.chunk())
        httpx.delete(f"{server.url}/api/streams/cam", timeout=10).raise_for_status()
        assert raw.chunk() == b""  # uvicorn's last chunk: the response completed properly
    finally:
        raw.close()
    for chunk, jpeg in zip(got, jpegs):
        parts = list(iter_parts([chunk]))
        assert len(parts) == 1 and parts[0][1] == jpeg
        assert chunk.startswith(b"--frame\r\n") and chunk.endswith(jpeg + b"\r\n")
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
        assert stats(server)["direct_viewers"] == 5
    finally:
        for viewer in viewers:
            viewer.close()
    assert len(set(firsts)) == 1 and list(iter_parts(firsts[:1]))[0][1] == jpegs[0]


def test_cors_viewer_falls_back_to_asgi_send(server):
    jpegs = [make_jpeg(seed=s) for s in range(10, 13)]
    publish(server.url, "cam", jpegs[0])
    origin = {"origin": "http://example.test"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/stream/cam", headers=origin) as response:
            assert response.headers["access-control-allow-origin"] == "*"
            parts = iter_parts(response.iter_bytes())
            got = [next(parts)[1]]
            during = stats(server)
            for jpeg in jpegs[1:]:
                publish(server.url, "cam", jpeg, client)
                got.append(next(parts)[1])
    assert during["viewer_count"] == 1 and during["direct_viewers"] == 0
    assert got == jpegs
