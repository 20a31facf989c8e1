"""Long-lived ingest: many frames on one connection.

- ``POST /publish/<name>`` with a ``multipart/x-mixed-replace`` (chunked) body: every
  part is a frame. This is what ``ffmpeg -f mpjpeg -method POST URL`` sends.
- ``/ws/publish/<name>``: a WebSocket whose binary messages are JPEG frames.

Every frame gets the checks of a single POST (``inspect_jpeg``, the frame size limit,
the stream limit). A bad frame ends that connection with its reason (a JSON error for
HTTP, a close code and reason for WebSocket); the frames before it stay published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import ApiError, FrameTooLarge, InvalidFrame, StreamLimitReached
from ..jpeg import inspect_jpeg
from ..mpjpeg import MpjpegParser, boundary_from_content_type
from ..streams import StreamRegistry, validate_stream_name
from .chunks import SERVER_RECEIVE, SERVER_SEND, DirectBody, DirectMessages
from .errors import error_response

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1) for each way a frame can be refused.
WS_UNSUPPORTED_DATA = 1003  # a text message where a binary JPEG was expected
WS_INVALID_PAYLOAD = 1007  # not a valid JPEG
WS_POLICY_VIOLATION = 1008  # bad stream name
WS_MESSAGE_TOO_BIG = 1009  # over server.max_frame_size_mb
WS_TRY_AGAIN_LATER = 1013  # stream limit reached
WS_MAX_REASON = 123  # bytes a close reason may take
# After refusing a part, close: uvicorn would otherwise keep the connection open and
# stop reading the rest of the body, so the publisher would block instead of failing.
CLOSE = {"Connection": "close"}


class IngestCounter:
    """Frames one connection has published into one stream."""

    def __init__(self, registry: StreamRegistry, name: str):
        self.registry = registry
        self.name = name
        self.frames = 0
        self.bytes = 0
        # The stream exists from the moment a publisher connects (or this raises its
        # limit at once): viewers who come before the first frame wait instead of 404.
        registry.get_or_create(name)

    def publish(self, jpeg: bytes) -> None:
        """Check and publish one frame, or raise the :class:`ApiError` a single POST would."""
        try:
            info = inspect_jpeg(jpeg)
        except InvalidFrame as exc:
            raise InvalidFrame(f"frame {self.frames + 1}: {exc.message}", code=exc.code) from None
        self.registry.get_or_create(self.name).publish(jpeg, info)
        self.frames += 1
        self.bytes += len(jpeg)

    def kept(self) -> str:
        """A sentence saying what stayed published."""
        return f"{self.frames} frame(s) before it were published"


async def mpjpeg_ingest(request: Request, name: str, peeked: bytes = b"") -> Response:
    """Publish every part of a ``multipart/x-mixed-replace`` request body, as it arrives.

    ``peeked``: body bytes already read to recognise the body (the request replays them
    through ``receive``; the direct path, which does not use ``receive``, takes them here).
    """
    runtime = request.app.state.runtime
    try:
        counter = IngestCounter(runtime.registry, name)
    except ApiError as exc:
        return error_response(exc.status_code, exc.code, exc.message, headers=CLOSE)
    hint = boundary_from_content_type(request.headers.get("content-type", ""))
    parser = MpjpegParser(runtime.settings.server.max_frame_bytes, hint)
    peer = request.client.host if request.client else "?"
    log.info("stream %s: multipart ingest from %s started", name, peer)
    direct = DirectBody.behind(request.scope.get(SERVER_SEND), request.scope)
    if direct is not None:
        consume = asyncio.create_task(_consume_direct(direct, parser, counter, peeked))
    else:
        consume = asyncio.create_task(_consume(request, parser, counter))
    draining = asyncio.create_task(request.app.state.draining.wait())
    try:
        await asyncio.wait({consume, draining}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        draining.cancel()
        if not consume.done():  # the server is shutting down (or this request was cancelled)
            consume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consume
    return _ingest_result(consume, counter, name, peer)


async def _consume(request: Request, parser: MpjpegParser, counter: IngestCounter) -> None:
    async for chunk in request.stream():
        for part in parser.feed(chunk):
            counter.publish(part)
    parser.close()


async def _consume_direct(
    body: DirectBody, parser: MpjpegParser, counter: IngestCounter, first: bytes
) -> None:
    """As :func:`_consume`, each frame published from inside uvicorn's ``data_received``."""
    failure: Exception | None = None

    def feed(data: bytes) -> None:
        nonlocal failure
        if failure is None:
            try:
                for part in parser.feed(data):
                    counter.publish(part)
            except Exception as exc:  # raised below, in this task, like _consume would
                failure = exc

    if first:
        feed(first)
    connected = await body.divert(feed, stop=lambda: failure is not None)
    if failure is not None:
        raise failure
    if not connected:
        raise ClientDisconnect()
    parser.close()


def _ingest_result(consume: asyncio.Task, counter: IngestCounter, name: str, peer: str) -> Response:
    exc = None if consume.cancelled() else consume.exception()
    if consume.cancelled():
        log.info("stream %s: multipart ingest from %s ended by shutdown after %d frames",
                 name, peer, counter.frames)
        return error_response(503, "shutting_down",
                              f"the server is shutting down; {counter.frames} frame(s) were published",
                              headers=CLOSE)
    if isinstance(exc, ClientDisconnect):
        # A publisher killed mid-stream (ffmpeg exits 255 on Ctrl-C): its frames stay.
        log.info("stream %s: multipart ingest from %s disconnected after %d frames",
                 name, peer, counter.frames)
        return Response(status_code=204)
    if isinstance(exc, ApiError):
        log.warning("stream %s: multipart ingest from %s refused: %s (%s)",
                    name, peer, exc.message, counter.kept())
        return error_response(
            exc.status_code, exc.code, f"{exc.message}; {counter.kept()}", headers=CLOSE
        )
    if exc is not None:
        raise exc
    log.info("stream %s: multipart ingest from %s ended after %d frames", name, peer, counter.frames)
    if counter.frames == 0:
        return error_response(400, "empty_frame", "multipart body held no frame")
    return JSONResponse(
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


def _reason(code: str, message: str) -> str:
    text = f"{code}: {message}".encode()[:WS_MAX_REASON]
    return text.decode("utf-8", "ignore")


async def ws_publish(websocket: WebSocket) -> None:
    """``/ws/publish/<name>``: each binary message is one JPEG frame."""
    await websocket.accept()
    runtime = websocket.app.state.runtime
    limit = runtime.settings.server.max_frame_bytes
    try:
        name = validate_stream_name(websocket.path_params["name"])
        counter = IngestCounter(runtime.registry, name)
        direct = DirectMessages.behind(websocket.scope.get(SERVER_RECEIVE))
        while True:
            if direct is not None:  # binary messages are published inside; others return
                message = await _direct_frames(direct, counter, limit)
            else:
                message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                log.info("stream %s: websocket ingest ended after %d frames", name, counter.frames)
                return
            data = message.get("bytes")
            if data is None:
                await websocket.close(
                    WS_UNSUPPORTED_DATA,
                    _reason("unsupported_data", "send frames as binary JPEG messages, not text"),
                )
                return
            _publish_message(counter, data, limit)
    except ApiError as exc:
        log.warning("websocket ingest on %s refused: %s", websocket.url.path, exc.message)
        await websocket.close(_close_code(exc), _reason(exc.code, exc.message))
    except WebSocketDisconnect:
        return


def _publish_message(counter: IngestCounter, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise FrameTooLarge(
            f"frame {counter.frames + 1} exceeds server.max_frame_size_mb "
            f"({limit / 1048576:g} MB)"
        )
    counter.publish(data)


async def _direct_frames(direct: DirectMessages, counter: IngestCounter, limit: int) -> dict:
    """Publish binary messages as uvicorn parses them (DirectMessages) until another kind
    of message comes, which is returned; a refused frame raises as in the loop above."""
    failure: Exception | None = None

    def on_bytes(data: bytes) -> bool:
        nonlocal failure
        try:
            _publish_message(counter, data, limit)
        except Exception as exc:  # raised below, in this task, as the loop above would
            failure = exc
            return False
        return True

    message = await direct.divert(on_bytes)
    if failure is not None:
        raise failure
    return message


def routes() -> list[WebSocketRoute]:
    """The WebSocket ingest route, for the app factory."""
    return [WebSocketRoute("/ws/publish/{name}", ws_publish)]


def install(app) -> None:
    """Register multipart ingest on the publish endpoint and the WebSocket route."""
    app.state.mpjpeg_ingest = mpjpeg_ingest
    app.router.routes.extend(routes())
