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

import asyncio
import os
from collections.abc import Callable

_HTTPTOOLS_CYCLE = ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle")
#: Scope key under which FastLane (outside every middleware) leaves the server's own
#: ``send`` for endpoints that want :class:`DirectBody`.
SERVER_SEND = "robogpt_video.server_send"


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


class _Diverted:
    """Stands in for the cycle's body ``bytearray``: ``+=`` hands the bytes on instead."""

    __slots__ = ("feed",)

    def __init__(self, feed: Callable[[bytes], None]) -> None:
        self.feed = feed

    def __iadd__(self, data: bytes) -> _Diverted:
        self.feed(data)
        return self

    def __len__(self) -> int:  # uvicorn pauses reading above its high-water mark: never
        return 0


class _EndWatch:
    """Stands in for the cycle's ``message_event``: uvicorn sets it after every body
    chunk, at the end of the body and when the client goes; only the last two matter."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check

    def set(self) -> None:
        self.check()


class DirectBody:
    """The request body of uvicorn's httptools cycle, handed to a callback as it is parsed.

    uvicorn appends each body chunk to a ``bytearray`` and wakes the request's task,
    which copies it out through ASGI ``receive``: for a long-lived ingest that is a
    task switch and two copies per chunk (400 streams × 30 fps without recording: 0.79
    of a core with ``receive``, 0.63 diverted; docs/bench.md). Diverted, the chunk goes straight from httptools to
    ``feed`` inside uvicorn's ``data_received``; the request's task only wakes when
    the body ends, the client goes, or ``feed`` asks to stop. Same guards as
    :class:`DirectChunks`; anything else keeps ASGI ``receive``.
    """

    __slots__ = ("cycle",)

    def __init__(self, cycle) -> None:
        self.cycle = cycle

    @classmethod
    def behind(cls, send, scope) -> DirectBody | None:
        """The direct body of the request behind ``send``, or ``None``."""
        if send is None or DirectChunks.behind(send, scope) is None:
            return None
        cycle = send.__self__
        if not isinstance(getattr(cycle, "body", None), bytearray):
            return None
        if not isinstance(getattr(cycle, "message_event", None), asyncio.Event):
            return None
        return cls(cycle)

    async def divert(self, feed: Callable[[bytes], None], stop: Callable[[], bool]) -> bool:
        """Call ``feed`` with every body chunk until the body ends (``True``), the client
        goes (``False``) or ``stop()`` is true after a chunk (``True``)."""
        cycle = self.cycle
        done = asyncio.get_running_loop().create_future()

        def check() -> None:
            if not done.done() and (cycle.disconnected or not cycle.more_body or stop()):
                done.set_result(None)

        event, received = cycle.message_event, bytes(cycle.body)
        cycle.body, cycle.message_event = _Diverted(feed), _EndWatch(check)
        try:
            if received:  # arrived before the diversion, not yet read through receive()
                feed(received)
            cycle.flow.resume_reading()  # uvicorn may have paused it with a full bytearray
            check()
            await done
        finally:
            cycle.body, cycle.message_event = bytearray(), event
            event.set()
        return not cycle.disconnected


_WS_SANSIO = ("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol")
#: Scope key under which FastLane leaves the server's own ``receive`` of a WebSocket.
SERVER_RECEIVE = "robogpt_video.server_receive"


class _MessageSink:
    """Stands in for the WebSocket protocol's message queue while diverted."""

    __slots__ = ("take",)

    def __init__(self, take: Callable[[dict], None]) -> None:
        self.take = take

    def put_nowait(self, message: dict) -> None:
        self.take(message)


class DirectMessages:
    """The binary messages of uvicorn's WebSocket connection, handed to a callback.

    uvicorn queues each message for ASGI ``receive``, pauses reading until the app has
    taken it and resumes afterwards: a queue hand-off, a task switch and two changes
    of the socket's polling per message. Diverted, each binary message goes from the
    protocol's parser to ``on_bytes`` inside ``data_received``. Taken only when
    ``receive`` is uvicorn's sans-I/O WebSocket protocol itself (its default with the
    ``websockets`` package); anything else keeps ASGI ``receive``.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol) -> None:
        self.protocol = protocol

    @classmethod
    def behind(cls, receive) -> DirectMessages | None:
        """The direct messages of the connection behind ``receive``, or ``None``."""
        protocol = getattr(receive, "__self__", None)
        kind = type(protocol)
        if (kind.__module__, kind.__qualname__) != _WS_SANSIO:
            return None
        if getattr(receive, "__func__", None) is not getattr(kind, "receive", None):
            return None
        if not isinstance(getattr(protocol, "queue", None), asyncio.Queue):
            return None
        if not hasattr(protocol, "read_paused") or getattr(protocol, "transport", None) is None:
            return None
        return cls(protocol)

    async def divert(self, on_bytes: Callable[[bytes], bool]) -> dict | None:
        """Call ``on_bytes`` with each binary message until it returns ``False``
        (then ``None``) or another message comes (text, disconnect: returned)."""
        protocol = self.protocol
        done = asyncio.get_running_loop().create_future()

        def take(message: dict) -> None:
            if done.done():  # after the end, in the same read: the app reads it as usual
                queue.put_nowait(message)
                return
            data = message.get("bytes") if message["type"] == "websocket.receive" else None
            if data is None:
                done.set_result(message)
            elif not on_bytes(data):
                done.set_result(None)

        queue = protocol.queue
        early = [queue.get_nowait() for _ in range(queue.qsize())]  # before the diversion
        protocol.queue = _MessageSink(take)
        try:
            for message in early:  # once done, take() puts the rest back, in order
                take(message)
            # The protocol pauses reading after each queued message unless it believes
            # it already has; nothing queues now, so reading stays on.
            protocol.read_paused = True
            if not protocol.transport.is_closing():
                protocol.transport.resume_reading()
            return await done
        finally:
            protocol.queue = queue
            protocol.read_paused = False
