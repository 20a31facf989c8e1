"""Long-lived ingest: many frames on one connection.

- ``POST /publish/<name>`` with a ``multipart/x-mixed-replace`` (chunked) body: every
  part is a frame. This is what ``ffmpeg -f mpjpeg -method POST URL`` sends.
- ``/ws/publish/<name>``: a WebSocket whose binary messages are JPEG frames.

Both read through aiohttp's public API (``request.content``, ``WebSocketResponse``).
Every frame gets the checks of a single POST (``inspect_jpeg``, the frame size limit,
the stream limit). A bad frame ends that connection with its reason (a JSON error for
HTTP, a close code and reason for WebSocket); the frames before it stay published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError, FrameTooLarge, InvalidFrame, StreamLimitReached
from ..jpeg import inspect_jpeg
from ..mpjpeg import MpjpegParser, boundary_from_content_type
from ..streams import StreamRegistry, validate_stream_name
from .errors import api_error, json_error
from .routes import add_resource, cors_headers
from .state import DRAINING, METRICS, RUNTIME, SOCKETS

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1) for each way a frame can be refused.
WS_UNSUPPORTED_DATA = 1003  # a text message where a binary JPEG was expected
WS_INVALID_PAYLOAD = 1007  # not a valid JPEG
WS_POLICY_VIOLATION = 1008  # bad stream name
WS_MESSAGE_TOO_BIG = 1009  # over server.max_frame_size_mb
WS_TRY_AGAIN_LATER = 1013  # stream limit reached
WS_MAX_REASON = 123  # bytes a close reason may take


async def _refuse(request: web.Request, response: web.Response) -> web.Response:
    """Send a refusal and close the connection: the rest of the body is not read, so
    the publisher fails at once instead of streaming into a server that discards it."""
    response.force_close()
    response.headers.update(cors_headers(request))  # publish() cannot add them once sent
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after what is queued (the answer) has been sent
    return response


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
        return await _refuse(request, api_error(exc))
    hint = boundary_from_content_type(request.headers.get("Content-Type", ""))
    parser = MpjpegParser(runtime.settings.server.max_frame_bytes, hint)
    peer = request.remote or "?"
    log.info("stream %s: multipart ingest from %s started", name, peer)
    consume = asyncio.create_task(_consume(request.content, parser, counter, first))
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
    response = _ingest_result(consume, counter, name, peer)
    return await _refuse(request, response) if response.status != 200 else response


async def _consume(content, parser: MpjpegParser, counter: IngestCounter, first: bytes) -> None:
    if first:
        for part in parser.feed(first):
            counter.publish(part)
    while chunk := await content.readany():
        for part in parser.feed(chunk):
            counter.publish(part)
    parser.close()


def _ingest_result(consume: asyncio.Task, counter: IngestCounter, name: str, peer: str):
    if consume.cancelled():
        log.info("stream %s: multipart ingest from %s ended by shutdown after %d frames",
                 name, peer, counter.frames)
        return json_error(
            503, "shutting_down",
            f"the server is shutting down; {counter.frames} frame(s) were published",
        )
    exc = consume.exception()
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
    limit = runtime.settings.server.max_frame_bytes
    # Messages up to 4 MB over the limit reach the check below, which closes with our
    # own reason; aiohttp closes on anything larger (1009 too) without reading it whole.
    ws = web.WebSocketResponse(max_msg_size=limit + 4 * 1048576)
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
    try:
        name = validate_stream_name(request.match_info["name"])
        if runtime.cluster is not None and runtime.registry.get(name) is None:
            await runtime.cluster.admit(name)  # the cluster-wide limit (docs/cluster.md)
        counter = IngestCounter(runtime.registry, name, request.app[METRICS].frames_in, "websocket")
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                _check_size(counter, message.data, limit)
                counter.publish(message.data)
            elif message.type == WSMsgType.TEXT:
                await ws.close(
                    code=WS_UNSUPPORTED_DATA,
                    message=_reason("unsupported_data",
                                    "send frames as binary JPEG messages, not text"),
                )
                break
        log.info("stream %s: websocket ingest ended after %d frames", name, counter.frames)
    except ApiError as exc:
        log.warning("websocket ingest on %s refused: %s", request.path, exc.message)
        await ws.close(code=_close_code(exc), message=_reason(exc.code, exc.message))
    finally:
        sockets.discard(ws)
    return ws


async def close_sockets(app: web.Application) -> None:
    """Close every ingest WebSocket with "going away" (the server is stopping)."""
    for ws in list(app[SOCKETS]):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def add_routes(app: web.Application) -> None:
    """Register the WebSocket ingest route."""
    add_resource(app, "/ws/publish/{name}", {"GET": ws_publish})
