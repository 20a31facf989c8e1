"""The hot paths: ``POST /publish/<name>``, ``GET /stream/<name>``, ``GET /snapshot/<name>``.

These are plain Starlette endpoints (FastAPI's request models would cost ≈55 µs a
frame); the viewer is a raw ASGI app so it can watch for the client leaving while
it waits for the next frame.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ApiError, StreamNotFound
from ..jpeg import inspect_jpeg
from ..mpjpeg import looks_like_multipart
from ..streams import CONTENT_TYPE, Stream, StreamRegistry, Viewer, validate_stream_name
from .bodies import MULTIPART_SLACK, frame_from_multipart, peek, read_limited
from .chunks import SERVER_RECEIVE, SERVER_SEND, DirectChunks
from .errors import EXCEPTION_HANDLERS, error_response

log = logging.getLogger(__name__)

RAW_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "application/octet-stream")
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
VIEW_HEADERS = (  # GET /stream/<name>; the direct path adds transfer-encoding
    (b"content-type", CONTENT_TYPE.encode()),
    *((k.lower().encode(), v.encode()) for k, v in NO_CACHE.items()),
    (b"x-accel-buffering", b"no"),
)


def _registry(request: Request) -> StreamRegistry:
    return request.app.state.runtime.registry


async def publish(request: Request) -> Response:
    """Accept one JPEG (multipart field ``frame`` or a raw ``image/jpeg`` body)."""
    try:
        return await _publish(request, time.perf_counter())
    except ApiError as exc:
        request.app.state.metrics.publish_rejected.labels(exc.code).inc()
        # One template for every rejection: the log filter collapses a flood to a few lines.
        log.warning("publish refused (%s %s): %s", exc.status_code, exc.code, exc.message)
        raise


async def _publish(request: Request, started: float) -> Response:
    name = validate_stream_name(request.path_params["name"])
    settings = request.app.state.runtime.settings
    limit = settings.server.max_frame_bytes
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    long_lived = request.app.state.mpjpeg_ingest
    if media == "multipart/form-data":
        body = await read_limited(request, limit + MULTIPART_SLACK)
        jpeg = frame_from_multipart(body, content_type, limit)
    elif media in RAW_TYPES:
        jpeg = await read_limited(request, limit)
    elif media in ("multipart/x-mixed-replace", "multipart/mixed") or media == "":
        if long_lived is not None and media == "":
            # No Content-Type (ffmpeg's mpjpeg POST): a body starting "--" is multipart,
            # anything else (a raw JPEG starts \xff\xd8) is one frame.
            request, head = await peek(request)
            if looks_like_multipart(head):
                return await long_lived(request, name, head)
        elif long_lived is not None:
            return await long_lived(request, name)
        jpeg = await read_limited(request, limit)
    else:
        raise ApiError(
            f"unsupported Content-Type {media!r}: send multipart/form-data with a "
            f"'frame' field, or a raw image/jpeg body",
            code="unsupported_media_type",
            status_code=415,
        )
    info = inspect_jpeg(jpeg)
    frame = _registry(request).get_or_create(name).publish(jpeg, info)
    request.app.state.metrics.publish_seconds.observe(time.perf_counter() - started)
    # Formatted by hand: json.dumps and JSONResponse were ≈4 % of the server's time at
    # 50 × 30 fps. ``name`` is [A-Za-z0-9_-] (validated above), so it needs no escaping.
    body = (
        f'{{"status":"success","stream":"{name}","frame_size":{frame.size},'
        f'"sequence":{frame.seq},"width":{frame.width},"height":{frame.height}}}'
    )
    return Response(body.encode(), media_type="application/json")


async def snapshot(request: Request) -> Response:
    """The latest JPEG of a stream, at once."""
    name = validate_stream_name(request.path_params["name"])
    stream = _registry(request).get(name)
    if stream is None:
        raise StreamNotFound(f"stream '{name}' does not exist")
    frame = stream.latest
    if frame is None:
        raise StreamNotFound(f"stream '{name}' has no frame yet", code="no_frame")
    return Response(
        bytes(frame.jpeg),
        media_type="image/jpeg",
        headers={**NO_CACHE, "X-Timestamp": f"{frame.timestamp:.6f}"},
    )


class MjpegView:
    """``GET /stream/<name>``: ``multipart/x-mixed-replace; boundary=frame`` until the end."""

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            name = validate_stream_name(scope["path_params"]["name"])
            stream = _registry(request).get(name)
            if stream is None:
                raise StreamNotFound(f"stream '{name}' does not exist")
            viewer = stream.add_viewer()
        except ApiError as exc:
            await error_response(exc.status_code, exc.code, exc.message)(scope, receive, send)
            return
        headers = list(VIEW_HEADERS)
        if scope["method"] == "HEAD":
            stream.remove_viewer(viewer)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        direct = DirectChunks.behind(send, scope)
        if direct is not None:  # explicit, so uvicorn frames only the head and the end
            headers.append((b"transfer-encoding", b"chunked"))
        viewer.task = asyncio.current_task()
        watcher = asyncio.create_task(self._watch_disconnect(receive, viewer))
        finished = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if direct is not None and direct.chunked():
                viewer.direct = True
                finished = await stream.serve(viewer, direct)
            else:
                finished = await self._send_asgi(stream, viewer, send)
        except asyncio.CancelledError:
            if not viewer.closed:  # not our own stall timeout: the server is stopping
                raise
        except OSError:  # the client went away mid-write
            pass
        finally:
            watcher.cancel()
            stream.remove_viewer(viewer)
        if finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_asgi(stream: Stream, viewer: Viewer, send) -> bool:
        """Each frame through ASGI ``send`` (any server); ``True`` when the stream ended."""
        while True:
            frame = await stream.next_frame(viewer)
            if frame is None:
                return True
            viewer.sending_since = time.monotonic()
            await send({"type": "http.response.body", "body": frame.part, "more_body": True})
            viewer.sending_since = 0.0
            stream.frames_sent += 1

    @staticmethod
    async def _watch_disconnect(receive, viewer) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                viewer.close()
                return


class FastLane:
    """Middleware: serves publish and view requests without the rest of the stack.

    Each layer of the Starlette/FastAPI stack (CORS, exception wrappers, exit stack,
    routing) costs a coroutine per request and a wrapper per viewer write: ≈27 µs of
    the ≈61 µs a publish took in Python. Requests with an ``Origin`` header (browsers
    doing CORS) and everything else still take the full stack; errors keep the one
    JSON shape. :meth:`install` puts it outside even ``ServerErrorMiddleware``, so a
    viewer gets uvicorn's own ``send`` and can write chunks directly (web/chunks.py).
    """

    def __init__(self, app) -> None:
        self.app = app
        self.view = MjpegView()

    @classmethod
    def install(cls, app) -> None:
        """Wrap ``app``'s whole middleware stack (built on the first request) in a FastLane."""
        build = app.build_middleware_stack
        app.build_middleware_stack = lambda: cls(build())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            handler = self._handler(scope)
            if handler is not None:
                await handler(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            scope[SERVER_RECEIVE] = receive  # WebSocket ingest takes messages directly
        await self.app(scope, receive, send)

    def _handler(self, scope):
        path, method = scope["path"], scope["method"]
        for prefix, methods, handler in (
            ("/publish/", ("POST", "PUT"), self._publish),
            ("/stream/", ("GET", "HEAD"), self.view),
        ):
            if path.startswith(prefix) and method in methods:
                name = path[len(prefix) :]
                if not name or "/" in name:
                    return None
                if any(key == b"origin" for key, _ in scope["headers"]):
                    return None  # CORS: the middleware adds its headers
                scope["path_params"] = {"name": name}
                return handler
        return None

    @staticmethod
    async def _publish(scope, receive, send) -> None:
        scope[SERVER_SEND] = send  # long-lived ingest reads the body directly (DirectBody)
        try:
            response = await publish(Request(scope, receive))
        except ApiError as exc:
            response = error_response(exc.status_code, exc.code, exc.message)
        except Exception as exc:  # outside ServerErrorMiddleware: same JSON 500 and log line
            response = await EXCEPTION_HANDLERS[Exception](Request(scope, receive), exc)
        await response(scope, receive, send)


def routes() -> list[Route]:
    """The live routes, for the app factory."""
    return [
        Route("/publish/{name}", publish, methods=["POST", "PUT"]),
        Route("/stream/{name}", MjpegView(), methods=["GET"]),
        Route("/snapshot/{name}", snapshot, methods=["GET"]),
    ]

