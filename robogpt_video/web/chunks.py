"""Viewer writes straight to uvicorn's transport, each frame's part as one chunk.

uvicorn's ``RequestResponseCycle.send`` (httptools) frames every body message as an
HTTP/1.1 chunk with ``b"".join([size, body, b"\r\n"])``: a full copy of the part
per viewer per frame, plus a few µs of Python. Here the chunk's size line, the
frame's shared part and the trailing CRLF go to the transport with ``writelines``
(one ``writev``, no copy). The response still starts and ends through ASGI ``send``,
so uvicorn writes the head and the last chunk and keeps its own state right.

When the transport has nothing buffered, the chunk goes out with ``os.sendfile``
from the frame's memfd (:meth:`~robogpt_video.streams.Frame.chunk_file`): the kernel
queues the file's pages instead of copying the chunk into each socket, and whatever
the socket did not take is queued on the transport as usual. This is what
:class:`~robogpt_video.streams.Stream` calls, from ``publish`` itself for an idle
viewer (:meth:`~robogpt_video.streams.Stream.serve`).

Taken only when ``send`` is uvicorn's httptools cycle itself; any other server, h11,
or a ``send`` wrapped by middleware (CORS requests) takes the plain ASGI path; TLS
transports are written to without ``sendfile``.
"""

from __future__ import annotations

import os

_HTTPTOOLS_CYCLE = ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle")


class DirectChunks:
    """uvicorn's connection behind one response's ``send``, written to directly."""

    __slots__ = ("cycle", "transport", "flow", "fd")

    def __init__(self, cycle) -> None:
        self.cycle = cycle
        self.transport = cycle.transport
        self.flow = cycle.flow
        self.fd = self._socket_fd(cycle.transport)

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

    @classmethod
    def behind(cls, send, scope) -> DirectChunks | None:
        """The direct writer for ``send`` if it is uvicorn's httptools cycle, else ``None``."""
        cycle = getattr(send, "__self__", None)
        kind = type(cycle)
        if (kind.__module__, kind.__qualname__) != _HTTPTOOLS_CYCLE:
            return None
        if scope.get("http_version") != "1.1":
            return None
        if getattr(send, "__func__", None) is not kind.send or cycle.response_started:
            return None
        if getattr(cycle, "transport", None) is None or getattr(cycle, "flow", None) is None:
            return None
        return cls(cycle)

    def chunked(self) -> bool:
        """After the response start: whether uvicorn frames this body as chunks."""
        return self.cycle.chunked_encoding is True and not self.cycle.response_complete

    @property
    def paused(self) -> bool:
        """The transport's buffer is over its high-water mark: wait with :meth:`drain`."""
        return self.flow.write_paused and not self.cycle.disconnected

    async def drain(self) -> None:
        """Wait until the transport takes writes again (or the client has gone)."""
        await self.flow.drain()

    def write_frame(self, frame) -> bool:
        """Send one frame's chunk without blocking; ``False`` once the connection is gone."""
        if self.cycle.disconnected or self.transport.is_closing():
            return False
        try:
            if self.fd is not None and not self.transport.get_write_buffer_size():
                file = frame.chunk_file()
                if file is not None:
                    return self._sendfile(file, frame)
            self.transport.writelines(frame.chunk_pieces())
        except RuntimeError:  # uvloop raises on a write to a handle that has closed
            return False
        return True

    def _sendfile(self, file: int, frame) -> bool:
        # Nothing is buffered in the transport, so bytes written to the socket here
        # come right after everything written before; the rest joins the transport's
        # buffer, and uvicorn's flow control sees it as for any write.
        size = frame.chunk_size
        try:
            sent = os.sendfile(self.fd, file, 0, size)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or broken pipe: the client has gone
            return False
        if sent < size:
            self.transport.writelines(frame.chunk_pieces(sent))
        return True
