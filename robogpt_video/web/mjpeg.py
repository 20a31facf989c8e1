"""MJPEG on the wire: each frame as a part of ``multipart/x-mixed-replace``, written
straight to a viewer's transport.

A stream's :class:`FrameWire` frames its latest frame once for all its MJPEG viewers:
the part's head (boundary and headers) and the HTTP/1.1 chunk-size line. Each
viewer's :class:`MjpegSink` writes (size line, head, JPEG, CRLF) to
``request.transport`` with ``writelines``: on uvloop (the server's loop) that is one
``writev`` and the uploaded JPEG is never copied; plain asyncio on Python 3.11 joins
the pieces into one buffer first. From ``SENDFILE_VIEWERS`` viewers on, a frame is also written once to a memfd
and sent with ``os.sendfile`` to every viewer whose transport has nothing queued: the
kernel then queues the file's pages instead of copying the chunk into each socket
(docs/bench.md). Only public interfaces are used: aiohttp's ``request.transport``
and the asyncio transport's buffer size and limits, and ``writer.drain()``.

A viewer's link, not its buffers, decides when it gets the next frame: its socket
takes a write only while fewer than ``NOTSENT_LOWAT`` of its bytes wait unsent
(``TCP_NOTSENT_LOWAT``), and its transport counts as full as soon as anything waits
in it. A viewer on a slow link is then about two frames behind what the link carries
instead of a send buffer and a transport buffer behind (docs/bench.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from weakref import WeakKeyDictionary

from ..streams import Frame, Stream

BOUNDARY = "frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
SENDFILE_VIEWERS = 8  # a frame's memfd pays off from about this many viewers
CRLF = b"\r\n"
CHUNK_END = b"\r\n\r\n"  # the part's CRLF, then the chunk's
#: Unsent bytes at which a viewer's socket stops taking writes (Linux TCP_NOTSENT_LOWAT;
#: bytes sent and not yet acknowledged do not count). A write taken below the mark can
#: still queue a whole segment beyond it: up to 96 KB unsent were measured (docs/bench.md).
NOTSENT_LOWAT = 16 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)


def part_head(size: int, timestamp: float) -> bytes:
    """The boundary line and headers of a frame's MJPEG part (the JPEG and CRLF follow)."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {size}\r\n"
        f"X-Timestamp: {timestamp:.6f}\r\n\r\n"
    ).encode("ascii")


def build_part(jpeg: bytes, timestamp: float) -> bytes:
    """One frame's whole MJPEG part as one bytes object (tests)."""
    return b"".join((part_head(len(jpeg), timestamp), jpeg, CRLF))


class WriteCounters:
    """How viewer frames left the process: per-path counts for ``/metrics``."""

    __slots__ = ("writev", "sendfile", "lowat_on", "lowat_off")

    def __init__(self) -> None:
        self.writev = 0  # frames written with transport.writelines
        self.sendfile = 0  # frames sent (at least partly) with os.sendfile from a memfd
        self.lowat_on = 0  # viewer sockets given TCP_NOTSENT_LOWAT
        self.lowat_off = 0  # viewer sockets it could not be set on


class FrameWire:
    """One stream's latest frame, framed once for all of its MJPEG viewers."""

    __slots__ = ("stream", "sinks", "counters", "seq", "head", "size_line", "part_size", "_fd")

    def __init__(self, counters: WriteCounters, stream: Stream) -> None:
        self.stream = stream  # its sinks add the part bytes they write to stream.bytes_out
        self.sinks = 0
        self.counters = counters
        self.seq = -1
        self.head = b""
        self.size_line = b""
        self.part_size = 0
        self._fd: int | None = None

    def _load(self, frame: Frame) -> None:
        self.close()
        self.seq = frame.seq
        self.head = part_head(frame.size, frame.timestamp)
        self.part_size = len(self.head) + frame.size + 2
        self.size_line = b"%x\r\n" % self.part_size

    def pieces(self, frame: Frame, chunked: bool) -> tuple:
        """The frame's part (as an HTTP/1.1 chunk when ``chunked``) for ``writelines``."""
        if frame.seq != self.seq:
            self._load(frame)
        if chunked:
            return (self.size_line, self.head, frame.jpeg, CHUNK_END)
        return (self.head, frame.jpeg, CRLF)

    def file(self, frame: Frame) -> int | None:
        """A memfd holding the frame's chunk, once enough viewers share it, else ``None``.

        Written once and never changed, so pages still queued in a socket stay valid
        after it is closed. Making it costs ≈25 µs (mostly the kernel's page
        allocation) against ≈4 µs saved per 42 KB viewer write (docs/bench.md).
        """
        if self.sinks < SENDFILE_VIEWERS:
            return None
        if frame.seq != self.seq:
            self._load(frame)
        if self._fd is None:
            try:
                fd = os.memfd_create("robogpt-frame", os.MFD_CLOEXEC)
            except (AttributeError, OSError):
                return None
            pieces = self.pieces(frame, chunked=True)
            try:
                if os.writev(fd, pieces) != sum(len(p) for p in pieces):
                    raise OSError("short write to memfd")
            except OSError:
                os.close(fd)
                return None
            self._fd = fd
        return self._fd

    def close(self) -> None:
        """Close the memfd of the frame held (a newer one came, or nobody watches)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class FrameWires:
    """The :class:`FrameWire` of every stream that has MJPEG viewers."""

    def __init__(self) -> None:
        self.counters = WriteCounters()
        self._wires: WeakKeyDictionary[Stream, FrameWire] = WeakKeyDictionary()

    def join(self, stream: Stream) -> FrameWire:
        """The stream's wire, with one more viewer on it."""
        wire = self._wires.get(stream)
        if wire is None:
            wire = self._wires[stream] = FrameWire(self.counters, stream)
        wire.sinks += 1
        return wire

    def leave(self, stream: Stream, wire: FrameWire) -> None:
        """One viewer fewer; the last one closes the wire's memfd."""
        wire.sinks -= 1
        if wire.sinks <= 0:
            wire.close()
            self._wires.pop(stream, None)


def _rest(pieces: Iterable, start: int) -> list:
    """``pieces`` from byte ``start`` on (after a partial ``sendfile``)."""
    out = []
    for piece in pieces:
        if start >= len(piece):
            start -= len(piece)
        else:
            out.append(memoryview(piece)[start:] if start else piece)
            start = 0
    return out


def limit_unsent(transport) -> bool:
    """Set ``NOTSENT_LOWAT`` on the transport's TCP socket; ``False`` where it cannot be.

    With it the socket is writable only while it holds fewer unsent bytes than that,
    so what the link has not taken yet stays in the transport, where the sink sees it.
    """
    sock = transport.get_extra_info("socket")
    if _TCP_NOTSENT_LOWAT is None or sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    except (AttributeError, OSError):  # not TCP, or a kernel without the option
        return False
    return True


class MjpegSink:
    """A viewer's ``/stream`` response, written to its transport directly."""

    __slots__ = ("transport", "writer", "wire", "chunked", "fd", "high")

    def __init__(self, transport, writer, wire: FrameWire, chunked: bool) -> None:
        self.transport = transport
        self.writer = writer  # aiohttp's payload writer: drain() waits out a full buffer
        self.wire = wire
        self.chunked = chunked
        self.fd = self._socket_fd(transport)
        if limit_unsent(transport):
            wire.counters.lowat_on += 1
        else:
            wire.counters.lowat_off += 1
        # Full as soon as anything waits in the transport, drained once it is empty: at
        # most what the socket did not take of one frame waits here, and the frame sent
        # next is the newest when the transport has emptied.
        transport.set_write_buffer_limits(high=0, low=0)
        self.high = transport.get_write_buffer_limits()[1]

    @staticmethod
    def _socket_fd(transport) -> int | None:
        """The plain TCP socket under ``transport``, or ``None`` (TLS, or no socket)."""
        if not hasattr(os, "sendfile") or transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        try:
            return sock.fileno() if sock is not None else None
        except (AttributeError, OSError):
            return None

    @property
    def paused(self) -> bool:
        """More is queued in the transport than its high-water mark."""
        return self.transport.get_write_buffer_size() > self.high

    async def drain(self) -> None:
        """Wait until the transport takes writes again (or the client has gone)."""
        await self.writer.drain()

    def write_frame(self, frame: Frame) -> bool:
        """Send one frame's part without blocking; ``False`` once the connection is gone."""
        transport = self.transport
        if transport.is_closing():
            return False
        wire = self.wire
        try:
            if self.fd is not None and not transport.get_write_buffer_size():
                file = wire.file(frame)
                if file is not None:
                    return self._sendfile(file, frame)
            transport.writelines(wire.pieces(frame, self.chunked))
        except RuntimeError:  # uvloop raises on a write to a handle that has closed
            return False
        wire.counters.writev += 1
        wire.stream.bytes_out += wire.part_size
        return True

    def _sendfile(self, file: int, frame: Frame) -> bool:
        # Nothing is queued in the transport, so bytes written to the socket here come
        # right after everything written before; what the socket did not take is
        # queued on the transport, whose flow control sees it as any other write.
        wire = self.wire
        offset = 0 if self.chunked else len(wire.size_line)
        size = wire.part_size + (len(wire.size_line) + 2 if self.chunked else 0)
        try:
            sent = os.sendfile(self.fd, file, offset, size)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or broken pipe: the client has gone
            return False
        if sent < size:
            self.transport.writelines(_rest(wire.pieces(frame, self.chunked), sent))
        wire.counters.sendfile += 1
        wire.stream.bytes_out += wire.part_size
        return True
