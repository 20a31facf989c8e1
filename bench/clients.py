"""The load generator's clients: publishers (three ingest kinds) and MJPEG viewers.

Hand-rolled HTTP/1.1 on asyncio: httpx or aiohttp cost more CPU per request than the
server under test does, and every core the load generator burns is one the server
cannot use on this 2-core machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from dataclasses import dataclass, field

from .frames import read_stamp, stamped, stamped_size
from .protocol import MjpegResponseReader, ProtocolError, ResponseHead, parse_response_head

FORM_BOUNDARY = b"benchformboundary7MA4YWxk"
FORM_HEAD = (
    b"--" + FORM_BOUNDARY + b'\r\nContent-Disposition: form-data; name="frame"; '
    b'filename="frame.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
)
FORM_TAIL = b"\r\n--" + FORM_BOUNDARY + b"--\r\n"


@dataclass
class Window:
    """The measured interval; counters only count what happens inside it."""

    start: float = float("inf")
    end: float = float("inf")

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Counters:
    """What the clients of one run saw."""

    window: Window = field(default_factory=Window)
    stop_at: float = float("inf")  # publishers stop after this (monotonic) time
    sent: int = 0  # frames written by publishers
    accepted: int = 0  # frames answered 200 (request/response ingest only)
    rejected: int = 0
    received: int = 0  # frames parsed by viewers
    skipped: int = 0  # sequence gaps seen by viewers
    bytes_received: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def error(self, text: str) -> None:
        """Remember a client failure (the first few verbatim)."""
        if len(self.errors) < 20:
            self.errors.append(text)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: tuple = ()) -> tuple[ResponseHead, bytes]:
        """Send a request head (ending in a blank line) and body pieces; return the response.

        A kept-alive connection the server closed while it was idle (its keep-alive
        timeout) is replaced and the request sent once more, as HTTP clients do."""
        reused = self.writer is not None
        try:
            return await self._request(head, body)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
        return await self._request(head, body)

    async def _request(self, head: bytes, body: tuple) -> tuple[ResponseHead, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.writelines((head, *body))
            raw = await self.reader.readuntil(b"\r\n\r\n")
            response = parse_response_head(raw[:-4])
            if response.content_length is not None:
                data = await self.reader.readexactly(response.content_length)
            elif response.chunked:
                data = await self._read_chunked()
            else:
                data = await self.reader.read()
                self.close()
                return response, data
        except BaseException:
            self.close()
            raise
        if not response.keep_alive:
            self.close()
        return response, data

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self.reader.readexactly(size + 2)
            del out[-2:]

    async def get_json(self, path: str) -> tuple[int, object]:
        """GET ``path`` and decode its JSON body."""
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        response, body = await self.request(head)
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 request head."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Pacer:
    """Paces a loop at ``fps`` from ``start``; when late it skips slots instead of bursting."""

    def __init__(self, fps: float, start: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next = start

    async def wait(self) -> None:
        """Sleep until the next slot."""
        if not self.period:
            await asyncio.sleep(0)
            return
        delay = self.next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.next += self.period
        now = time.monotonic()
        if self.next < now - self.period:
            self.next = now


async def post_publisher(
    host: str, port: int, name: str, jpeg: bytes, fps: float, c: Counters, phase: float
) -> None:
    """``POST /publish/<name>`` as multipart/form-data (the brief's client), one keep-alive connection."""
    conn = HttpConnection(host, port)
    length = len(FORM_HEAD) + stamped_size(jpeg) + len(FORM_TAIL)
    head = request_head(
        "POST",
        f"/publish/{name}",
        host,
        {
            "Content-Type": f"multipart/form-data; boundary={FORM_BOUNDARY.decode()}",
            "Content-Length": str(length),
        },
    )
    pacer = Pacer(fps, time.monotonic() + phase)
    seq = 0
    try:
        while time.monotonic() < c.stop_at:
            await pacer.wait()
            seq += 1
            sent = time.monotonic()
            stamp, rest = stamped(jpeg, seq, sent)
            try:
                response, _ = await conn.request(head, (FORM_HEAD, stamp, rest, FORM_TAIL))
            except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
                c.error(f"publish {name}: {exc!r}")
                await asyncio.sleep(0.05)
                continue
            if sent in c.window:
                c.sent += 1
                if response.status == 200:
                    c.accepted += 1
                else:
                    c.rejected += 1
    finally:
        conn.close()


def mpjpeg_chunk(stamp: bytes, rest: memoryview, boundary: bytes = b"frame") -> tuple:
    """One HTTP chunk holding one multipart part (what ``ffmpeg -f mpjpeg`` sends)."""
    size = len(stamp) + len(rest)
    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (boundary, size)
    return (b"%x\r\n" % (len(head) + size + 2), head, stamp, rest, b"\r\n\r\n")


async def mpjpeg_publisher(
    host: str, port: int, name: str, jpeg: bytes, fps: float, c: Counters, phase: float
) -> None:
    """Long-lived ``POST /publish/<name>``: a chunked multipart/x-mixed-replace body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        request_head(
            "POST",
            f"/publish/{name}",
            host,
            {
                "Content-Type": "multipart/x-mixed-replace; boundary=frame",
                "Transfer-Encoding": "chunked",
            },
        )
    )
    await _stream_frames(writer, jpeg, fps, c, phase, mpjpeg_chunk)
    try:
        closing = b"--frame--\r\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(closing), closing))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        c.error(f"mpjpeg {name} end: {exc!r}")
    finally:
        writer.close()


async def _stream_frames(writer, jpeg, fps, c: Counters, phase, encode) -> None:
    pacer = Pacer(fps, time.monotonic() + phase)
    seq = 0
    while time.monotonic() < c.stop_at:
        await pacer.wait()
        seq += 1
        sent = time.monotonic()
        try:
            writer.writelines(encode(*stamped(jpeg, seq, sent)))
            await writer.drain()
        except (OSError, RuntimeError) as exc:
            c.error(f"stream write: {exc!r}")
            return
        if sent in c.window:
            c.sent += 1


def ws_frame(stamp: bytes, rest: memoryview) -> tuple:
    """A masked binary WebSocket message; the all-zero mask leaves the payload as is."""
    size = len(stamp) + len(rest)
    if size < 126:
        head = struct.pack("!BB", 0x82, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
    return (head + b"\0\0\0\0", stamp, rest)


async def ws_connect(host: str, port: int, name: str):
    """Open ``/ws/publish/<name>``; returns (reader, writer) or raises ``ProtocolError``."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        request_head(
            "GET",
            f"/ws/publish/{name}",
            host,
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
            },
        )
    )
    try:
        head = parse_response_head((await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))[:-4])
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError) as exc:
        writer.close()
        raise ProtocolError(f"no WebSocket handshake answer: {exc!r}") from None
    if head.status != 101:
        writer.close()
        raise ProtocolError(f"WebSocket handshake answered HTTP {head.status}")
    return reader, writer


async def ws_publisher(
    host: str, port: int, name: str, jpeg: bytes, fps: float, c: Counters, phase: float
) -> None:
    """``/ws/publish/<name>``: one binary message per JPEG."""
    try:
        reader, writer = await ws_connect(host, port, name)
    except (OSError, ProtocolError) as exc:
        c.error(f"ws {name}: {exc!r}")
        return
    drain = asyncio.create_task(_discard(reader))
    await _stream_frames(writer, jpeg, fps, c, phase, ws_frame)
    try:
        writer.write(b"\x88\x82\0\0\0\0\x03\xe8")  # close, status 1000
        await asyncio.wait_for(asyncio.shield(drain), 2)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        drain.cancel()
        writer.close()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


PUBLISHERS = {"post": post_publisher, "mpjpeg": mpjpeg_publisher, "ws": ws_publisher}


class ViewerProtocol(asyncio.Protocol):
    """``GET /stream/<name>``: parses every part and records latency and skipped frames."""

    def __init__(self, c: Counters):
        self.c = c
        self.reader = MjpegResponseReader()
        self.last_seq = 0
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        try:
            parts = self.reader.feed(data)
        except ProtocolError as exc:
            self.c.error(f"viewer: {exc}")
            self.transport.close()
            return
        counting = now in self.c.window
        for part in parts:
            found = read_stamp(part.body)
            if found is None or found[0] <= self.last_seq:
                continue  # a re-sent frame of a quiet stream
            seq, sent = found
            if counting:
                self.c.received += 1
                self.c.latencies.append(now - sent)
                if self.last_seq:
                    self.c.skipped += seq - self.last_seq - 1
            self.last_seq = seq

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


class CountingViewer(asyncio.BufferedProtocol):
    """A viewer that only counts bytes (fan-out ceiling): no parsing, no copies."""

    def __init__(self, c: Counters):
        self.c = c
        self.buf = bytearray(1024 * 1024)
        self.first = True
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        if self.first:
            self.first = False
            if not self.buf.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self.c.error(f"viewer: {bytes(self.buf[:40])!r}")
                self.transport.close()
                return
        if time.monotonic() in self.c.window:
            self.c.bytes_received += nbytes

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def open_viewer(host: str, port: int, name: str, c: Counters, counting: bool = False):
    """Connect a viewer of ``name``; returns its transport."""
    loop = asyncio.get_running_loop()
    factory = (lambda: CountingViewer(c)) if counting else (lambda: ViewerProtocol(c))
    transport, _ = await loop.create_connection(factory, host, port)
    transport.write(request_head("GET", f"/stream/{name}", host, {}))
    return transport
