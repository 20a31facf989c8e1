"""Long-lived ingest: many frames on one connection.

- ``POST /publish/<name>`` with a ``multipart/x-mixed-replace`` (chunked) body: every
  part is a frame. This is what ``ffmpeg -f mpjpeg -method POST URL`` sends.
- ``/ws/publish/<name>``: a WebSocket whose binary messages are JPEG frames.

Both read through aiohttp's public API (``request.content``, ``WebSocketResponse``).
Every frame gets the checks of a single POST (``inspect_jpeg``, the frame size limit,
the stream limit). A bad frame ends that connection with its reason (a JSON error for
HTTP, a close code and reason for WebSocket); the frames before it stay published.

A camera may pause: between frames a publisher may be quiet for up to
``streams.timeout_seconds`` (the time after which its stream counts as inactive), then
the connection ends (408 ``request_timeout``, or close code 4408), frames kept. Inside
a frame the body timeout applies (``server.body_timeout_seconds``): an mpjpeg part
that stops arriving ends the request with a 408; a WebSocket silent that long is
pinged and closed if no pong comes within half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from ..aio import Inactivity
from ..errors import (
    ApiError,
    FrameTooLarge,
    IngestIdle,
    InvalidFrame,
    RequestTimeout,
    StreamLimitReached,
)
from ..jpeg import inspect_jpeg
from ..mpjpeg import MpjpegParser, boundary_from_content_type
from ..streams import StreamRegistry, validate_stream_name
from .errors import api_error, json_error
from .routes import add_resource, answer_and_close
from .state import DRAINING, METRICS, RUNTIME, SOCKETS

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1) for each way a frame can be refused.
WS_UNSUPPORTED_DATA = 1003  # a text message where a binary JPEG was expected
WS_INVALID_PAYLOAD = 1007  # not a valid JPEG
WS_POLICY_VIOLATION = 1008  # bad stream name
WS_MESSAGE_TOO_BIG = 1009  # over server.max_frame_size_mb
WS_TRY_AGAIN_LATER = 1013  # stream limit reached
WS_TIMEOUT = 4408  # no frame for streams.timeout_seconds (4000-4999: for applications)
WS_MAX_REASON = 123  # bytes a close reason may take


class IngestCounter:
    """Frames one connection has published into one stream."""

    def __init__(self, registry: StreamRegistry, name: str, counts: dict, via: str):
        self.registry = registry
        self.name = name
        self.frames = 0
        self.bytes = 0
        self._counts = counts  # the process's frames-in counter by ingest kind
        self._via = via
        # A refusal at the stream limit comes at once, but the stream exists only from
        # its first valid frame: a connection that sends nothing holds no stream slot.
        registry.check_room(name)

    def publish(self, jpeg: bytes) -> None:
        """Check and publish one frame, or raise the :class:`ApiError` a single POST would."""
        try:
            info = inspect_jpeg(jpeg)
        except InvalidFrame as exc:
            raise InvalidFrame(f"frame {self.frames + 1}: {exc.message}", code=exc.code) from None
        self.registry.get_or_create(self.name).publish(jpeg, info)
        self.frames += 1
        self.bytes += len(jpeg)
        self._counts[self._via] += 1

    def kept(self) -> str:
        """A sentence saying what stayed published."""
        return f"{self.frames} frame(s) before it were published"


async def mpjpeg_ingest(request: web.Request, name: str, first: bytes = b"") -> web.Response:
    """Publish every part of a ``multipart/x-mixed-replace`` request body, as it arrives.

    ``first``: body bytes already read to recognise the body.
    """
    runtime = request.app[RUNTIME]
    try:
        if runtime.cluster is not None and runtime.registry.get(name) is None:
            await runtime.cluster.admit(name)  # the cluster-wide limit (docs/cluster.md)
        counter = IngestCounter(runtime.registry, name, request.app[METRICS].frames_in, "mpjpeg")
    except ApiError as exc:
        return await answer_and_close(request, api_error(exc))
    hint = boundary_from_content_type(request.headers.get("Content-Type", ""))
    parser = MpjpegParser(runtime.settings.server.max_frame_bytes, hint)
    peer = request.remote or "?"
    log.info("stream %s: multipart ingest from %s started", name, peer)
    settings = runtime.settings
    limits = (settings.server.body_timeout_seconds, settings.streams.timeout_seconds)
    consume = asyncio.create_task(_consume(request.content, parser, counter, first, *limits))
    draining = asyncio.create_task(request.app[DRAINING].wait())
    try:
        await asyncio.wait({consume, draining}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The publisher went away mid-stream (ffmpeg exits 255 on Ctrl-C): its frames stay.
        log.info("stream %s: multipart ingest from %s disconnected after %d frames",
                 name, peer, counter.frames)
        raise
    finally:
        draining.cancel()
        if not consume.done():
            consume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consume
    response = _ingest_result(request, consume, counter, name, peer)
    return await answer_and_close(request, response) if response.status != 200 else response


async def _consume(
    content, parser: MpjpegParser, counter: IngestCounter, first: bytes,
    body_timeout: float, idle_timeout: float,
) -> None:
    """Feed the body to the parser and publish each part, until the body ends.

    Raises :class:`RequestTimeout` when no byte comes for ``body_timeout`` seconds
    inside a part, or for ``idle_timeout`` seconds between parts.
    """
    if first:
        for part in parser.feed(first):
            counter.publish(part)

    def allowed() -> float:
        return idle_timeout if parser.between_parts else body_timeout

    try:
        async with Inactivity(min(body_timeout, idle_timeout), allowed) as clock:
            while chunk := await content.readany():
                clock.touch()
                for part in parser.feed(chunk):
                    counter.publish(part)
    except TimeoutError:
        if parser.between_parts:
            raise IngestIdle(
                f"no frame for {idle_timeout:g} s (streams.timeout_seconds)"
            ) from None
        raise RequestTimeout(
            f"part {parser.parts + 1} sent nothing for {body_timeout:g} s "
            "(server.body_timeout_seconds)"
        ) from None
    parser.close()


def _ingest_result(request: web.Request, consume: asyncio.Task, counter: IngestCounter,
                   name: str, peer: str):
    if consume.cancelled():
        log.info("stream %s: multipart ingest from %s ended by shutdown after %d frames",
                 name, peer, counter.frames)
        return json_error(
            503, "shutting_down",
            f"the server is shutting down; {counter.frames} frame(s) were published",
        )
    exc = consume.exception()
    if isinstance(exc, RequestTimeout):
        request.app[METRICS].timed_out[exc.timeout] += 1
    if isinstance(exc, ApiError):
        log.warning("stream %s: multipart ingest from %s refused: %s (%s)",
                    name, peer, exc.message, counter.kept())
        return json_error(exc.status_code, exc.code, f"{exc.message}; {counter.kept()}")
    if exc is not None:
        raise exc
    log.info("stream %s: multipart ingest from %s ended after %d frames", name, peer, counter.frames)
    if counter.frames == 0:
        return json_error(400, "empty_frame", "multipart body held no frame")
    return web.json_response(
        {"status": "success", "stream": name, "frames": counter.frames, "bytes": counter.bytes}
    )


def _close_code(exc: ApiError) -> int:
    if isinstance(exc, FrameTooLarge):
        return WS_MESSAGE_TOO_BIG
    if isinstance(exc, StreamLimitReached):
        return WS_TRY_AGAIN_LATER
    if exc.code == "invalid_stream_name":
        return WS_POLICY_VIOLATION
    if exc.code == "shutting_down":  # opened while the server stops
        return WSCloseCode.GOING_AWAY
    return WS_INVALID_PAYLOAD


def _reason(code: str, message: str) -> bytes:
    return f"{code}: {message}".encode()[:WS_MAX_REASON]


def _check_size(counter: IngestCounter, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise FrameTooLarge(
            f"frame {counter.frames + 1} exceeds server.max_frame_size_mb "
            f"({limit / 1048576:g} MB)"
        )


async def ws_publish(request: web.Request) -> web.StreamResponse:
    """``/ws/publish/<name>``: each binary message is one JPEG frame."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    limit = settings.server.max_frame_bytes
    ws = web.WebSocketResponse(
        # Messages up to 4 MB over the limit reach the check below, which closes with
        # our own reason; aiohttp closes on anything larger (1009 too) without reading it.
        max_msg_size=limit + 4 * 1048576,
        # Silent this long, the publisher is pinged; no pong within half of it, and
        # aiohttp closes the connection (a dead link, or a frame that stopped midway).
        heartbeat=settings.server.body_timeout_seconds,
    )
    if not ws.can_prepare(request).ok:
        return json_error(400, "websocket_required",
                          "connect with a WebSocket client (Upgrade: websocket)")
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the client left during the handshake
        return ws
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    counter = None
    idle = settings.streams.timeout_seconds
    try:
        name = validate_stream_name(request.match_info["name"])
        if runtime.cluster is not None and runtime.registry.get(name) is None:
            await runtime.cluster.admit(name)  # the cluster-wide limit (docs/cluster.md)
        counter = IngestCounter(runtime.registry, name, request.app[METRICS].frames_in, "websocket")
        async with Inactivity(idle) as clock:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    clock.touch()
                    _check_size(counter, message.data, limit)
                    counter.publish(message.data)
                elif message.type == WSMsgType.TEXT:
                    await ws.close(
                        code=WS_UNSUPPORTED_DATA,
                        message=_reason("unsupported_data",
                                        "send frames as binary JPEG messages, not text"),
                    )
                    break
                elif message.type == WSMsgType.ERROR and isinstance(message.data, TimeoutError):
                    _no_pong(request)
        log.info("stream %s: websocket ingest ended after %d frames", name, counter.frames)
    except asyncio.CancelledError:
        # The connection was lost. If aiohttp closed it after a ping with no pong, the
        # handler is cancelled (handler_cancellation) before it sees the error message.
        if isinstance(ws.exception(), TimeoutError):
            _no_pong(request)
        raise
    except TimeoutError:
        request.app[METRICS].timed_out["idle"] += 1
        reason = f"no frame for {idle:g} s (streams.timeout_seconds); {counter.kept()}"
        log.info("stream %s: websocket ingest closed: %s", name, reason)
        await ws.close(code=WS_TIMEOUT, message=_reason("request_timeout", reason))
    except ApiError as exc:
        log.warning("websocket ingest on %s refused: %s", request.path, exc.message)
        await ws.close(code=_close_code(exc), message=_reason(exc.code, exc.message))
    finally:
        sockets.discard(ws)
    return ws


def _no_pong(request: web.Request) -> None:
    """Count and log a WebSocket publisher that left a ping unanswered (the heartbeat)."""
    request.app[METRICS].timed_out["body"] += 1
    log.info("websocket ingest on %s closed: no pong within %g s of a ping "
             "(server.body_timeout_seconds)", request.path,
             request.app[RUNTIME].settings.server.body_timeout_seconds / 2)


async def close_sockets(app: web.Application) -> None:
    """Close every ingest WebSocket with "going away" (the server is stopping)."""
    for ws in list(app[SOCKETS]):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def add_routes(app: web.Application) -> None:
    """Register the WebSocket ingest route."""
    add_resource(app, "/ws/publish/{name}", {"GET": ws_publish})
