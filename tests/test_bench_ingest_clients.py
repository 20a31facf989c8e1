"""The long-lived ingest clients speak their protocols: checked by independent receivers.

The server's long-lived ingest is built elsewhere; these tests make sure the bench's
clients are right before it lands: the WebSocket publisher against the ``websockets``
library's server, the chunked mpjpeg publisher against ffmpeg's mpjpeg demuxer.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import simplejpeg
import websockets

from bench.clients import Counters, mpjpeg_publisher, ws_publisher
from bench.frames import read_stamp
from bench.protocol import ChunkedDecoder, parse_headers
from helpers import make_jpeg

JPEG = make_jpeg(160, 120)


def test_ws_publisher_sends_stamped_binary_jpegs():
    received: list[bytes] = []
    paths: list[str] = []

    async def handler(ws):
        paths.append(ws.request.path)
        async for message in ws:
            received.append(message)

    async def main():
        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            c = Counters(stop_at=time.monotonic() + 0.5)
            c.window.start, c.window.end = 0, float("inf")
            await ws_publisher("127.0.0.1", port, "cam1", JPEG, 30, c, 0)
            await asyncio.sleep(0.1)
            return c

    c = asyncio.run(main())
    assert paths == ["/ws/publish/cam1"]
    assert not c.errors
    assert len(received) == c.sent >= 5
    seqs = [read_stamp(m)[0] for m in received]
    assert seqs == list(range(1, len(received) + 1))
    assert simplejpeg.decode_jpeg(received[-1]).shape == (120, 160, 3)


def test_mpjpeg_publisher_body_is_read_by_ffmpeg(tmp_path):
    body = bytearray()
    heads: list = []

    async def handle(reader, writer):
        request_line, _, head = (await reader.readuntil(b"\r\n\r\n"))[:-4].partition(b"\r\n")
        heads.append((request_line, parse_headers(head)))
        decoder = ChunkedDecoder()
        while not decoder.done:
            data = await reader.read(65536)
            if not data:
                break
            body.extend(decoder.feed(data))
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}')
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Counters(stop_at=time.monotonic() + 0.5)
        c.window.start, c.window.end = 0, float("inf")
        await mpjpeg_publisher("127.0.0.1", port, "cam1", JPEG, 30, c, 0)
        server.close()
        return c

    c = asyncio.run(main())
    assert not c.errors and c.sent >= 5
    assert heads[0][0] == b"POST /publish/cam1 HTTP/1.1"
    assert heads[0][1]["content-type"] == "multipart/x-mixed-replace; boundary=frame"
    assert heads[0][1]["transfer-encoding"] == "chunked"
    source = tmp_path / "body.mjpeg"
    source.write_bytes(bytes(body))
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "mpjpeg", "-i", str(source), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "mpjpeg", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,width,height", "-of", "csv=p=0", str(source)],
        capture_output=True, text=True, timeout=60,
    )
    width, height, frames = probe.stdout.strip().split(",")
    assert (int(width), int(height)) == (160, 120)
    assert int(frames) == c.sent
