"""The hot paths on aiohttp: ``POST /publish/<name>``, ``GET /stream/<name>``,
``GET /snapshot/<name>``.

Plain aiohttp handlers: no middleware, no ASGI layer. A viewer is a
:class:`~robogpt_video.web.mjpeg.MjpegSink` on its own transport, handed each new
frame by ``publish`` itself while it is idle (see :meth:`Stream.serve`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..errors import ApiError, RequestTimeout, StreamNotFound
from ..jpeg import inspect_jpeg
from ..mpjpeg import looks_like_multipart
from ..streams import Stream, validate_stream_name
from ..variants import DEFAULT_QUALITY, MAX_FPS, QUALITY_RANGE, WIDTH_RANGE
from .bodies import MULTIPART_SLACK, frame_from_multipart, peek, read_limited
from .errors import api_error
from .ingest import mpjpeg_ingest
from .mjpeg import CONTENT_TYPE, MjpegSink
from .routes import add_resource, answer_and_close, cors_headers
from .state import METRICS, RUNTIME

log = logging.getLogger(__name__)

RAW_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "application/octet-stream")
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
VIEW_HEADERS = {"Content-Type": CONTENT_TYPE, **NO_CACHE, "X-Accel-Buffering": "no"}


async def publish(request: web.Request) -> web.StreamResponse:
    """Accept one JPEG (multipart field ``frame`` or a raw ``image/jpeg`` body)."""
    try:
        response = await _publish(request, time.perf_counter())
    except ApiError as exc:
        metrics = request.app[METRICS]
        metrics.publish_rejected.labels(exc.code).inc()
        # One template for every rejection: the log filter collapses a flood to a few lines.
        log.warning("publish refused (%s %s): %s", exc.status_code, exc.code, exc.message)
        response = api_error(exc)
        if isinstance(exc, RequestTimeout):  # the body stalled: answer, and end the connection
            metrics.timed_out[exc.timeout] += 1
            return await answer_and_close(request, response)
    if not response.prepared:
        response.headers.update(cors_headers(request))
    return response


async def _publish(request: web.Request, started: float) -> web.StreamResponse:
    name = validate_stream_name(request.match_info["name"])
    runtime = request.app[RUNTIME]
    limit = runtime.settings.server.max_frame_bytes
    timeout = runtime.settings.server.body_timeout_seconds
    content_type = request.headers.get("Content-Type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        # Counted against server.max_frame_memory_mb while read (a longer declared
        # length is refused before any byte is read).
        with runtime.memory.reading(min(request.content_length or 0, limit + MULTIPART_SLACK)):
            body = await read_limited(request, limit + MULTIPART_SLACK, timeout)
        jpeg = frame_from_multipart(body, content_type, limit)
    elif media in RAW_TYPES:
        with runtime.memory.reading(min(request.content_length or 0, limit)):
            jpeg = await read_limited(request, limit, timeout)
    elif media in ("multipart/x-mixed-replace", "multipart/mixed"):
        return await mpjpeg_ingest(request, name)
    elif media == "":
        # No Content-Type (ffmpeg's mpjpeg POST): a body starting "--" is multipart,
        # anything else (a raw JPEG starts \xff\xd8) is one frame.
        head = await peek(request, timeout)
        if looks_like_multipart(head):
            return await mpjpeg_ingest(request, name, head)
        jpeg = await read_limited(request, limit, timeout, head)
    else:
        raise ApiError(
            f"unsupported Content-Type {media!r}: send multipart/form-data with a "
            f"'frame' field, or a raw image/jpeg body",
            code="unsupported_media_type",
            status_code=415,
        )
    info = inspect_jpeg(jpeg)
    stream = runtime.registry.get(name)
    if stream is None:
        if runtime.cluster is not None:  # claims it cluster-wide: on creation, not per frame
            await runtime.cluster.admit(name)
        stream = runtime.registry.get_or_create(name)
    frame = stream.publish(jpeg, info)
    request.app[METRICS].frames_in["post"] += 1
    request.app[METRICS].publish_seconds.observe(time.perf_counter() - started)
    # Formatted by hand: json.dumps was ≈4 % of the server's time at 50 × 30 fps.
    # ``name`` is [A-Za-z0-9_-] (validated above), so it needs no escaping.
    body = (
        f'{{"status":"success","stream":"{name}","frame_size":{frame.size},'
        f'"sequence":{frame.seq},"width":{frame.width},"height":{frame.height}}}'
    )
    return web.Response(body=body.encode(), content_type="application/json")


async def _live_stream(request: web.Request, want_frame: bool = False) -> Stream:
    name = validate_stream_name(request.match_info["name"])
    runtime = request.app[RUNTIME]
    stream = runtime.registry.get(name)
    if stream is None and runtime.cluster is not None:  # published on another node?
        stream = await runtime.cluster.mirror(name, want_frame)
    if stream is None:
        raise StreamNotFound(f"stream '{name}' does not exist")
    return stream


def _invalid(message: str) -> ApiError:
    return ApiError(message, code="invalid_parameters", status_code=400)


def _number(query, key: str, kind: type, low: float, high: float, low_open: bool = False):
    text = query.get(key)
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise _invalid(f"{key}={text!r} is not a number") from None
    if not (low < value if low_open else low <= value) or not value <= high:
        shown = f"> {low:g}" if low_open else f">= {low:g}"
        raise _invalid(f"{key}={text!r} is out of range: it must be {shown} and <= {high:g}")
    return value


def view_options(query) -> tuple[float | None, int | None, int]:
    """``fps``, ``width`` and ``quality`` from a query string (``None``: not asked)."""
    fps = _number(query, "fps", float, 0.0, MAX_FPS, low_open=True)
    width = _number(query, "width", int, *WIDTH_RANGE)
    quality = _number(query, "quality", int, *QUALITY_RANGE)
    return fps, width, DEFAULT_QUALITY if quality is None else quality


async def snapshot(request: web.Request) -> web.Response:
    """The latest JPEG of a stream, at once (resized with ``?width=&quality=``)."""
    try:
        _, width, quality = view_options(request.query)
        stream = await _live_stream(request, want_frame=True)
        frame = stream.latest
        if frame is None:
            raise StreamNotFound(f"stream '{stream.name}' has no frame yet", code="no_frame")
    except ApiError as exc:
        return api_error(exc, cors_headers(request))
    headers = {**NO_CACHE, "X-Timestamp": f"{frame.timestamp:.6f}", **cors_headers(request)}
    if width is not None and request.method != "HEAD":
        body = await request.app[METRICS].variants.snapshot(stream, frame, width, quality)
    else:
        body = bytes(frame.jpeg)
    return web.Response(body=body, content_type="image/jpeg", headers=headers)


async def view(request: web.Request) -> web.StreamResponse:
    """``GET /stream/<name>``: ``multipart/x-mixed-replace; boundary=frame`` until the end."""
    try:
        fps, width, quality = view_options(request.query)
        stream = await _live_stream(request)
        stream.check_viewer_room()
    except ApiError as exc:
        return api_error(exc, cors_headers(request))
    response = web.StreamResponse(headers={**VIEW_HEADERS, **cors_headers(request)})
    if request.method == "HEAD":
        return response
    chunked = request.version >= (1, 1)
    if chunked:
        response.enable_chunked_encoding()
    writer = await response.prepare(request)
    writer.send_headers()  # before any direct write to the transport
    transport = request.transport
    if transport is None or transport.is_closing():
        return response
    metrics = request.app[METRICS]
    variant = None
    if width is not None:  # a resized version, shared by its viewers: serve that stream
        try:
            stream.check_viewer_room()  # counts the viewers of all its variants
        except ApiError:
            return response
        variant = metrics.variants.join(stream, width, quality)
        stream = variant.stream
    wires = metrics.wires
    wire = wires.join(stream)
    try:
        viewer = stream.add_viewer(MjpegSink(transport, writer, wire, chunked), fps)
    except ApiError:  # others took the last places while the response started
        wires.leave(stream, wire)
        if variant is not None:
            metrics.variants.leave(variant)
        return response
    viewer.task = asyncio.current_task()
    finished = False
    try:
        finished = await stream.serve(viewer)
    except asyncio.CancelledError:
        if not viewer.closed:  # the client went away, or the server is stopping
            raise
        transport.abort()  # the stall detector gave up on a client that reads nothing
    finally:
        stream.remove_viewer(viewer)
        wires.leave(stream, wire)
        if variant is not None:
            metrics.variants.leave(variant)
    if finished and not transport.is_closing():
        await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Register the hot routes (before the catch-all JSON API)."""
    for path, handlers in (
        ("/publish/{name}", {"POST": publish, "PUT": publish}),
        ("/stream/{name}", {"GET": view, "HEAD": view}),
        ("/snapshot/{name}", {"GET": snapshot, "HEAD": snapshot}),
    ):
        add_resource(app, path, handlers)
