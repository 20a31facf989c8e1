"""``GET /ws/view``: every live stream a page shows, over one WebSocket.

A browser holds at most 6 HTTP/1.1 connections per server, so one MJPEG request per
tile cannot show a fleet. Here the page sends one JSON text message naming the streams
it wants (with ``fps``/``width``/``quality`` each); each message replaces the set. The
server answers each frame with one binary message: a small header, then the JPEG
(docs/dashboard.md "The view socket" describes both).

Each subscribed stream is one viewer of the usual engine (:meth:`Stream.serve`) whose
sink is a :class:`SocketSink`: it holds at most one frame waiting for the socket, so
on a slow link each stream skips to its newest frame (counted in
``frames_dropped_slow_viewers``) and nothing queues without bound. Resized frames come
from the variants ``/stream?width=`` viewers share. One writer task per connection
sends the waiting frames and the text messages in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections import deque

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError, StreamNotFound
from ..streams import Frame, Stream, Viewer, validate_stream_name
from ..variants import DEFAULT_QUALITY, MAX_FPS, QUALITY_RANGE, WIDTH_RANGE, Variant
from .access import current_principal
from .errors import json_error
from .routes import add_resource
from .state import ACCESS, METRICS, RUNTIME, SOCKETS

log = logging.getLogger(__name__)

#: Version byte of the binary frame header.
HEADER_VERSION = 1
#: After the version byte and the name (length byte + ASCII): sequence (float64),
#: arrival time (float64, Unix seconds), age when sent (float32, seconds), width, height
#: (uint16); big-endian.
_FIELDS = struct.Struct(">ddfHH")
MAX_SUBSCRIPTIONS = 256
MAX_MESSAGE_BYTES = 65536
#: Answers (text messages) a socket may have waiting to be written before it is read
#: no further until the page takes them.
MAX_QUEUED_TEXTS = 8


class SocketSink:
    """One stream's frames on one socket (a :class:`~robogpt_video.streams.FrameSink`).

    ``paused`` while a frame waits for the socket: the engine then waits in
    :meth:`drain` and sends the newest frame after it, not every one in between.
    """

    __slots__ = ("_socket", "_head", "pending", "gone", "_drained", "counted")

    def __init__(self, socket: ViewSocket, name: str, counted: Stream) -> None:
        self._socket = socket
        encoded = name.encode()
        self._head = bytes((HEADER_VERSION, len(encoded))) + encoded
        self.pending: Frame | None = None
        self.gone = False
        self._drained: asyncio.Future | None = None
        self.counted = counted  # the stream whose viewer this is (bytes_out)

    @property
    def paused(self) -> bool:
        return self.pending is not None and not self.gone

    async def drain(self) -> None:
        while self.paused:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def write_frame(self, frame: Frame) -> bool:
        if self.gone:
            return False
        self.pending = frame
        self._socket.ready(self)
        return True

    def message(self, frame: Frame) -> bytes:
        """The binary message of ``frame``: header, then the JPEG."""
        age = max(0.0, time.time() - frame.timestamp)
        fields = _FIELDS.pack(frame.seq, frame.timestamp, age, frame.width, frame.height)
        return b"".join((self._head, fields, frame.jpeg))

    def sent(self) -> None:
        """The waiting frame has gone to the socket: the engine may hand the next."""
        self.pending = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def end(self) -> None:
        self.gone = True
        self.sent()


class Subscription:
    """One stream of one socket: its options, viewer, sink and serving task."""

    def __init__(self, name: str, options: tuple) -> None:
        self.name = name
        self.options = options  # (fps, width, quality)
        self.stream: Stream | None = None  # the stream served (a variant's, if resized)
        self.parent: Stream | None = None
        self.variant: Variant | None = None
        self.viewer: Viewer | None = None
        self.sink: SocketSink | None = None
        self.task: asyncio.Task | None = None
        self.dropped = False  # the client no longer wants it


def _invalid(message: str) -> ApiError:
    return ApiError(message, code="invalid_message", status_code=400)


def _option(entry: dict, key: str, kind: type, low: float, high: float, low_open=False):
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{key} of stream {entry.get('name')!r} must be a number")
    if kind is int and value != int(value):
        raise _invalid(f"{key} of stream {entry.get('name')!r} must be a whole number")
    if not (low < value if low_open else low <= value) or value > high:
        shown = f"> {low:g}" if low_open else f">= {low:g}"
        raise _invalid(f"{key}={value!r} of stream {entry.get('name')!r} is out of range: "
                       f"it must be {shown} and <= {high:g}")
    return kind(value)


def parse_subscribe(text: str) -> dict[str, tuple]:
    """``{"type": "subscribe", "streams": [{"name", "fps"?, "width"?, "quality"?}]}`` as
    {name: (fps, width, quality)}, or raise an ``invalid_message`` :class:`ApiError`."""
    try:
        message = json.loads(text)
    except ValueError:
        raise _invalid("a message must be JSON") from None
    if not isinstance(message, dict) or message.get("type") != "subscribe":
        raise _invalid('send {"type": "subscribe", "streams": [{"name": ...}, ...]}')
    entries = message.get("streams")
    if not isinstance(entries, list):
        raise _invalid("streams must be a list of {name, fps?, width?, quality?}")
    if len(entries) > MAX_SUBSCRIPTIONS:
        raise _invalid(f"at most {MAX_SUBSCRIPTIONS} streams per socket, not {len(entries)}")
    wanted = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _invalid("each entry of streams needs a name")
        unknown = set(entry) - {"name", "fps", "width", "quality"}
        if unknown:  # named, but not echoed whole: the answer stays small
            shown = ", ".join(repr(key[:32]) for key in sorted(unknown)[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise _invalid(f"unknown field(s) {shown}{more} in streams "
                           "(known: name, fps, width, quality)")
        name = validate_stream_name(entry["name"])
        fps = _option(entry, "fps", float, 0.0, MAX_FPS, low_open=True)
        width = _option(entry, "width", int, *WIDTH_RANGE)
        quality = _option(entry, "quality", int, *QUALITY_RANGE)
        wanted[name] = (fps, width, DEFAULT_QUALITY if quality is None else quality)
    return wanted


class ViewSocket:
    """One page's socket: its subscriptions and the task that writes to it."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.runtime = request.app[RUNTIME]
        self.variants = request.app[METRICS].variants
        self.principal = current_principal.get()
        self.checked = request.app[ACCESS].authenticator.enabled  # else anyone may view
        self.subs: dict[str, Subscription] = {}
        self._queue: deque = deque()  # sinks with a frame waiting, and text messages
        self.texts = 0  # text messages queued and not yet written
        self._texts_sent = asyncio.Event()
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_forever(), name="view-socket")
        self.closing = False

    # -- writing -------------------------------------------------------------------------

    def ready(self, sink: SocketSink) -> None:
        self._queue.append(sink)
        self._wake.set()

    def say(self, kind: str, **fields) -> None:
        """Queue a JSON text message for the page."""
        self._queue.append(json.dumps({"type": kind, **fields}))
        self.texts += 1
        self._wake.set()

    async def caught_up(self) -> None:
        """Return once at most :data:`MAX_QUEUED_TEXTS` answers wait to be written: the
        next message is read only then, so a page that sends without reading is slowed
        down by its own socket instead of queueing answers in memory."""
        while self.texts > MAX_QUEUED_TEXTS and not self._writer.done():
            self._texts_sent.clear()
            await self._texts_sent.wait()

    async def _write_forever(self) -> None:
        try:
            await self._write()
        except ConnectionError:  # the page went away: the reading side ends too
            log.debug("view socket from %s: write failed", self.request.remote, exc_info=True)
        finally:
            self._texts_sent.set()  # caught_up() returns: nothing more will be written

    async def _write(self) -> None:
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, str):
                    await ws.send_str(item)
                    self.texts -= 1
                    self._texts_sent.set()
                    continue
                frame = item.pending
                if frame is None or item.gone:
                    continue
                data = item.message(frame)
                await ws.send_bytes(data)
                item.counted.bytes_out += len(data)
                item.sent()

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(self, text: str) -> None:
        try:
            wanted = parse_subscribe(text)
        except ApiError as exc:
            self.say("error", error=exc.code, message=exc.message)
            return
        for name, sub in list(self.subs.items()):
            if wanted.get(name) != sub.options:
                self._drop(sub)
        for name, options in wanted.items():
            if name not in self.subs:
                await self._add(name, options)
        self.say("subscribed", streams=sorted(self.subs))

    async def _add(self, name: str, options: tuple) -> None:
        if self.checked and not self.principal.may("view", name):
            self.say("forbidden", stream=name, error="forbidden",
                     message=f"user '{self.principal.name}' has no view permission on "
                     f"stream '{name}'")
            return
        fps, width, quality = options
        try:
            stream = self.runtime.registry.get(name)
            if stream is None and self.runtime.cluster is not None:
                stream = await self.runtime.cluster.mirror(name)
            if stream is None or stream.closed:
                raise StreamNotFound(f"stream '{name}' does not exist")
            stream.check_viewer_room()
        except ApiError as exc:
            self.say("ended" if isinstance(exc, StreamNotFound) else "error",
                     stream=name, error=exc.code, message=exc.message)
            return
        if self.closing or name in self.subs:  # closed or re-subscribed while we waited
            return
        sub = Subscription(name, options)
        sub.parent = stream
        if width is not None:
            sub.variant = self.variants.join(stream, width, quality)
            stream = sub.variant.stream
        sub.stream = stream
        sub.sink = SocketSink(self, name, stream)
        sub.viewer = stream.add_viewer(sub.sink, fps)
        self.subs[name] = sub
        sub.task = sub.viewer.task = asyncio.create_task(self._serve(sub), name=f"view-{name}")

    def _drop(self, sub: Subscription) -> None:
        """The client no longer wants ``sub``: its viewer ends now."""
        sub.dropped = True
        self.subs.pop(sub.name, None)
        self._release(sub)

    def _release(self, sub: Subscription) -> None:
        if sub.sink.gone:
            return
        sub.sink.end()
        sub.viewer.close()
        sub.stream.remove_viewer(sub.viewer)
        if sub.variant is not None:
            self.variants.leave(sub.variant)

    async def _serve(self, sub: Subscription) -> None:
        try:
            await sub.stream.serve(sub.viewer)
        except asyncio.CancelledError:
            if sub.viewer.closed and not sub.dropped and not self.closing:
                # The engine's stall detector: the socket took nothing for
                # streams.viewer_stall_seconds. The whole link is stuck: end it.
                log.warning("view socket from %s stalled: closing it", self.request.remote)
                if self.request.transport is not None:
                    self.request.transport.abort()
            raise
        finally:
            self._release(sub)
        if not sub.dropped and not self.closing:
            self.subs.pop(sub.name, None)
            self.say("ended", stream=sub.name, error="stream_ended",
                     message=f"stream '{sub.name}' ended")

    async def close(self) -> None:
        self.closing = True
        tasks = [sub.task for sub in self.subs.values()]
        for sub in list(self.subs.values()):
            self._drop(sub)
        self._writer.cancel()
        for task in (self._writer, *tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ws_view(request: web.Request) -> web.StreamResponse:
    """``GET /ws/view``: frames of every subscribed stream, one binary message each."""
    settings = request.app[RUNTIME].settings
    ws = web.WebSocketResponse(
        compress=False,  # JPEGs do not deflate; it would only cost CPU
        max_msg_size=MAX_MESSAGE_BYTES,
        heartbeat=settings.server.body_timeout_seconds,  # a dead peer is noticed
    )
    if not ws.can_prepare(request).ok:
        return json_error(400, "websocket_required",
                          "connect with a WebSocket client (Upgrade: websocket)")
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        return ws
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    view = ViewSocket(request, ws)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await view.subscribe(message.data)
            elif message.type == WSMsgType.BINARY:
                view.say("error", error="invalid_message",
                         message="send JSON text messages, not binary ones")
            await view.caught_up()
    finally:
        await view.close()
        sockets.discard(ws)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.OK)
    return ws


def add_routes(app: web.Application) -> None:
    """Register the viewing WebSocket route."""
    add_resource(app, "/ws/view", {"GET": ws_view})
