"""Recordings API: list, download (with Range), delete, replay as MJPEG (from any time,
at any speed) and single frames for stepping.

Directory scans, sidecar reads, deletes and demuxing all run in worker threads.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import ApiError, NotFound
from ..recording.replay import Replay, Still, frame_at
from ..recording.store import (
    SIDECAR_SUFFIX, RecordingFile, RecordingStore, fd_path, sidecar_time,
)
from .access import current_principal
from .mjpeg import BOUNDARY, CONTENT_TYPE
from .peers import PEER_HEADER, Peers
from .schemas import ErrorBody, RecordingDeleted

router = APIRouter(tags=["recordings"])
# What each route answers besides 200, for the OpenAPI document (/docs).
_NAME = {400: {"model": ErrorBody, "description": "`invalid_stream_name`"}}
_FILE = {
    **_NAME,
    404: {"model": ErrorBody, "description": "`not_found`: no such recording (on any node)"},
    503: {"model": ErrorBody, "description": "`node_unreachable` (cluster): not on the nodes "
          "that answered, and a node that may have it did not answer"},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_HEADER = {"schema": {"type": "string"}}
_DOWNLOAD = {
    200: {
        "description": "The whole file: `video/mp4` (`Content-Disposition: attachment`), "
        "or the sidecar's JSON for a `.json` name",
        "content": {"video/mp4": _BINARY, "application/json": {"schema": {"type": "object"}}},
        "headers": {name: _HEADER for name in ("Accept-Ranges", "ETag", "Last-Modified")},
    },
    206: {
        "description": "The bytes of the `Range` header, with `Content-Range`; "
        "several ranges come as `multipart/byteranges`",
        "content": {"video/mp4": _BINARY, "application/json": _BINARY,
                    "multipart/byteranges": _BINARY},
        "headers": {"Content-Range": _HEADER},
    },
    400: {"model": ErrorBody, "description": "`invalid_stream_name`, or `invalid_range`: "
          "a malformed `Range` header"},
    404: _FILE[404],
    503: _FILE[503],
    416: {
        "model": ErrorBody,
        "description": "`range_not_satisfiable`: the `Range` starts past the end of the "
        "file; `Content-Range: bytes */<size>`",
        "headers": {"Content-Range": _HEADER},
    },
}
# HEAD: the same statuses and headers, no body.
_DOWNLOAD_HEAD = {
    status: {key: value for key, value in answer.items() if key not in ("content", "model")}
    for status, answer in _DOWNLOAD.items()
}


def _store(request: Request) -> RecordingStore:
    runtime = request.app.state.runtime
    if runtime.recorder is not None:
        return runtime.recorder.store
    return RecordingStore(runtime.settings.recording.directory)


def _open_paths(request: Request, elsewhere: set[str] = frozenset()) -> set:
    """Video files being written: by this node, and (``elsewhere``: "stream/file"
    names) by other nodes sharing its recordings directory."""
    recorder = request.app.state.runtime.recorder
    found = recorder.open_paths() if recorder is not None else set()
    if elsewhere:
        root = _store(request).root
        found = found | {root / name for name in elsewhere}
    return found


def _peers(request: Request) -> Peers | None:
    """The other nodes (cluster on), unless this request came from one of them: a
    proxied request is answered from this node's files, never passed on again."""
    peers = getattr(request.app.state, "peers", None)
    if peers is None or PEER_HEADER in request.headers:
        return None
    return peers


async def _elsewhere(request: Request) -> tuple[dict[str, str] | None, set[str]]:
    """(the nodes to ask, or None while Redis cannot say; the files that nodes sharing
    this node's directory are writing)."""
    peers = getattr(request.app.state, "peers", None)
    if peers is None:
        return {}, set()
    return await peers.others()


async def _local_or_proxied(request: Request, stream: str, file: str, suffix: str = "",
                            params: tuple[str, ...] = ()):
    """(store, recording) of a file this node has; else another node's answer to this
    request (a ``Response``), proxied with the query parameters ``params`` (nothing
    else: a ``?token=`` is the user's, not for another node); NotFound if no node has it."""
    store = _store(request)
    try:
        return store, await asyncio.to_thread(store.resolve, stream, file)
    except NotFound:
        peers = _peers(request)
        if peers is None:
            raise
    store.name(stream, file)  # a name no recording can have: 404 here, no node asked
    node, url = await peers.locate(stream, file)
    path = f"/api/recordings/{stream}/{file}{suffix}"
    query = {key: request.query_params[key] for key in params if key in request.query_params}
    return None, await peers.proxy(request.method, node, url, path, request.headers, query)


def _parse_time(value: str | None, field: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(
            f"{field}={value!r} is not an ISO-8601 time (e.g. 2026-01-21T10:30:00Z)",
            code="invalid_time",
        ) from None
    if parsed.tzinfo is None:  # times without a zone are UTC, like the file names
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _entry(store: RecordingStore, rec: RecordingFile, open_paths: set) -> dict:
    meta = store.read_sidecar(rec) or {}
    info = store.stat(rec)
    size = info.st_size if info is not None else None
    base = f"/api/recordings/{rec.stream}/{rec.name}"
    # A sidecar is trusted for nothing: times that do not parse give way to the file's
    # name (start) or to "unknown" (end), a status that is not text to "unknown".
    start = meta.get("start_time")
    if sidecar_time(start) is None:
        start = rec.start.isoformat().replace("+00:00", "Z")
    end = meta.get("end_time")
    if sidecar_time(end) is None:
        end = None
    status = meta.get("status")
    return {
        **meta,
        "stream_name": rec.stream,
        "file": rec.name,
        "start_time": start,
        "end_time": end,
        "status": status if isinstance(status, str) else "unknown",
        "size_bytes": size,
        "open": rec.path in open_paths,
        "download_url": base,
        "sidecar_url": base[: -len(".mp4")] + SIDECAR_SUFFIX,
        "play_url": f"{base}/play",
    }


def _overlaps(entry: dict, since: float | None, until: float | None) -> bool:
    start = sidecar_time(entry["start_time"]) or 0.0
    end = sidecar_time(entry.get("end_time")) or time.time()  # still open: until now
    return (since is None or end >= since) and (until is None or start <= until)


def _everything(stream: str) -> bool:
    return True


def _listing(store: RecordingStore, stream, since, until, open_paths, visible) -> list[dict]:
    entries = [_entry(store, rec, open_paths) for rec in store.list(stream) if visible(rec.stream)]
    entries = [e for e in entries if _overlaps(e, since, until)]
    entries.sort(key=lambda e: (e["start_time"], e["file"]), reverse=True)
    return entries


@router.get(
    "/api/recordings",
    responses={400: {"model": ErrorBody, "description": "`invalid_time`: `since` or `until` "
                     "is not an ISO-8601 time; `invalid_stream_name`"}},
)
async def list_recordings(
    request: Request,
    stream: str | None = Query(None, description="Only this stream"),
    since: str | None = Query(None, description="ISO-8601; recordings that end after it"),
    until: str | None = Query(None, description="ISO-8601; recordings that start before it"),
) -> dict:
    """Recordings on disk, newest first, with their sidecar metadata and size.

    With a cluster: every node's (each entry has ``node``); ``nodes`` names the nodes
    whose recordings are listed, ``missing_nodes`` those that did not answer, and
    ``complete`` is false if any did not or Redis cannot say which nodes there are
    (``problems`` says why)."""
    since_ts, until_ts = _parse_time(since, "since"), _parse_time(until, "until")
    store = _store(request)
    if stream:
        store.stream_dir(stream)  # validates the name before it touches a path
    if request.app.state.authenticator.enabled:
        visible = current_principal.get().can_see("playback")
    else:
        visible = _everything
    others, writing = await _elsewhere(request)
    entries = await asyncio.to_thread(
        _listing, store, stream or None, since_ts, until_ts, _open_paths(request, writing),
        visible,
    )
    cluster = request.app.state.runtime.cluster
    if cluster is None:
        return {"count": len(entries), "recordings": entries}
    for entry in entries:
        entry["node"] = cluster.node_name
    nodes, missing, problems = [cluster.node_name], {}, []
    peers = _peers(request)
    if peers is not None and others is None:
        problems.append("Redis unreachable: the other nodes and their recordings are unknown")
    elif peers is not None and others:
        query = {key: value for key, value in
                 (("stream", stream), ("since", since), ("until", until)) if value}
        more, answered, missing = await peers.listings(others, query)
        entries = _merged(entries, [e for e in more if visible(e["stream_name"])])
        nodes += answered
        problems += [f"node {name} did not answer: {why}" for name, why in sorted(missing.items())]
    return {
        "count": len(entries),
        "recordings": entries,
        "nodes": nodes,
        "missing_nodes": sorted(missing),
        "complete": not problems,
        "problems": problems,
    }


def _merged(entries: list[dict], more: list[dict]) -> list[dict]:
    """This node's entries and other nodes', newest first; a file two nodes list (a
    shared directory) once, open if either writes it."""
    seen = {(e["stream_name"], e["file"]): e for e in entries}
    for entry in more:
        key = (entry["stream_name"], entry["file"])
        if key in seen:
            seen[key]["open"] = bool(seen[key].get("open") or entry.get("open"))
        else:
            seen[key] = entry
    out = list(seen.values())
    out.sort(key=lambda e: (str(e.get("start_time")), e["file"]), reverse=True)
    return out


class OpenFileResponse(FileResponse):
    """Starlette's FileResponse (Range, HEAD, ETag as it does them) of a file the store
    has already opened and checked: it reads ``/proc/self/fd/N``, which is that very
    file whatever its name has become, so nothing is opened by name after the check.
    The file is closed when the response ends."""

    def __init__(self, file: io.BufferedReader, info: os.stat_result, **kwargs) -> None:
        super().__init__(fd_path(file), stat_result=info, **kwargs)
        self.file = file
        self.size = info.st_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(
                scope, receive, _json_range_errors(send, self.size, scope["method"] == "HEAD")
            )
        finally:
            self.file.close()


#: The JSON body that replaces Starlette's plain-text answer to a bad ``Range``.
_RANGE_ERRORS = {
    400: ("invalid_range", "malformed Range header"),
    416: ("range_not_satisfiable", "the Range starts past the end of the file ({size} bytes)"),
}


def _json_range_errors(send: Send, size: int, head: bool) -> Send:
    """``send`` for a FileResponse, with its 400 and 416 (a bad ``Range``) answered in
    the one JSON error shape; its other messages pass unchanged."""
    replaced = False

    async def wrapped(message) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message["status"] in _RANGE_ERRORS:
            code, text = _RANGE_ERRORS[message["status"]]
            body = json.dumps({"status": "error", "error": code,
                               "message": text.format(size=size)}).encode()
            kept = [(k, v) for k, v in message["headers"]
                    if k.lower() not in (b"content-type", b"content-length", b"content-range")]
            headers = [*kept, (b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]
            if message["status"] == 416:  # Starlette 0.42 (the oldest allowed) leaves out the unit
                headers.append((b"content-range", f"bytes */{size}".encode()))
            await send({**message, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else body})
            replaced = True
        elif replaced:
            return  # Starlette's own body of that answer
        else:
            await send(message)

    return wrapped


def _open(store: RecordingStore, rec: RecordingFile, sidecar: bool):
    file = store.open(rec, sidecar)
    return file, os.fstat(file.fileno())


@router.get("/api/recordings/{stream}/{file}", response_class=FileResponse, responses=_DOWNLOAD)
@router.head(
    "/api/recordings/{stream}/{file}", response_class=FileResponse, responses=_DOWNLOAD_HEAD
)
async def download_recording(request: Request, stream: str, file: str) -> FileResponse:
    """The video file (``Range`` requests get ``206``), or its ``.json`` sidecar."""
    store, rec = await _local_or_proxied(request, stream, file)
    if store is None:
        return rec  # another node's answer
    if file.endswith(SIDECAR_SUFFIX):
        opened, info = await asyncio.to_thread(_open, store, rec, True)
        return OpenFileResponse(opened, info, media_type="application/json")
    opened, info = await asyncio.to_thread(_open, store, rec, False)
    return OpenFileResponse(opened, info, media_type="video/mp4", filename=rec.name)


@router.delete(
    "/api/recordings/{stream}/{file}",
    response_model=RecordingDeleted,
    responses={**_FILE, 409: {"model": ErrorBody, "description": "`recording_in_use`: "
                              "the recording is being written; it can be deleted once it closes"}},
)
async def delete_recording(request: Request, stream: str, file: str) -> dict:
    """Delete one recording and its sidecar, and the cached clips made from it (``409``
    while it is being written)."""
    store, rec = await _local_or_proxied(request, stream, file)
    if store is None:
        return rec  # another node's answer
    _, writing = await _elsewhere(request)
    if rec.path in _open_paths(request, writing):
        raise ApiError(
            f"recording '{rec.name}' is being written; it can be deleted once it closes",
            code="recording_in_use",
            status_code=409,
        )
    freed = await asyncio.to_thread(store.delete, rec)
    # Clips made from it go too: a copy must not outlive a recording deleted on purpose.
    clips = await request.app.state.runtime.clips.forget_recording(rec.stream, rec.name)
    message = f"Recording '{rec.name}' deleted"
    if clips:
        message += f", with {len(clips)} clip(s) made from it"
    return {"status": "success", "message": message, "freed_bytes": freed}


#: The replay speeds ``/play`` accepts (times the recorded pace).
MIN_SPEED, MAX_SPEED = 0.25, 8.0
#: The largest ``start``/``t`` (seconds into a recording; a segment is far shorter):
#: larger numbers are a 400, not an overflow in FFmpeg's seek.
MAX_OFFSET = 10_000_000
_PART_HEADERS = ("Content-Type", "Content-Length", "X-Timestamp", "X-Offset")


async def _recording_start(store: RecordingStore, rec: RecordingFile) -> float:
    meta = await asyncio.to_thread(store.read_sidecar, rec) or {}
    return sidecar_time(meta.get("start_time")) or rec.start.timestamp()


def _unreadable(rec: RecordingFile, exc: Exception) -> ApiError:
    # No readable frame yet (a segment opened a moment ago), or not a video at all.
    return ApiError(f"recording '{rec.name}' cannot be read: {exc}", code="unreadable",
                    status_code=409)


@router.get(
    "/api/recordings/{stream}/{file}/play",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Live MJPEG at the recorded timing (divided by `speed`), "
              "`X-Recording-Start` the recording's start (Unix time); each part has "
              + ", ".join(f"`{h}`" for h in _PART_HEADERS) + " (`X-Timestamp` the frame's "
              "wall-clock time, `X-Offset` its seconds into the recording, exactly as "
              "`/frame` takes and gives them)",
              "content": {CONTENT_TYPE: _BINARY}, "headers": {"X-Recording-Start": _HEADER}},
        400: {"model": ErrorBody, "description": "`invalid_stream_name`; "
              "`invalid_parameters`: `start` below 0 or above 10,000,000, or `speed` outside "
              f"{MIN_SPEED:g}-{MAX_SPEED:g}"},
        404: _FILE[404],
        409: {"model": ErrorBody, "description": "`unreadable`: no frame can be read yet "
              "(a segment opened a moment ago)"},
        503: _FILE[503],
    },
)
async def play_recording(
    request: Request,
    stream: str,
    file: str,
    start: float = Query(0.0, ge=0, le=MAX_OFFSET, allow_inf_nan=False,
                         description="Seconds into the recording: replay from the frame "
                         "on screen at that moment"),
    speed: float = Query(1.0, ge=MIN_SPEED, le=MAX_SPEED, allow_inf_nan=False,
                         description="Times the recorded pace (`2`: twice as fast)"),
) -> StreamingResponse:
    """The recording replayed as live MJPEG at its recorded timing (any browser plays it).
    Seeking and another speed are a new request with other ``start`` and ``speed``."""
    store, rec = await _local_or_proxied(request, stream, file, "/play", ("start", "speed"))
    if store is None:
        return rec  # another node's answer
    start_ts = await _recording_start(store, rec)
    try:
        replay = await asyncio.to_thread(_open_replay, store, rec, start)
    except NotFound:
        raise
    except Exception as exc:
        raise _unreadable(rec, exc) from None
    headers = {"Cache-Control": "no-cache, no-store", "X-Recording-Start": repr(start_ts)}
    return StreamingResponse(
        _replay_parts(replay, start_ts, speed), media_type=CONTENT_TYPE, headers=headers
    )


def _open_replay(store: RecordingStore, rec: RecordingFile, start: float) -> Replay:
    # FFmpeg opens the file the store opened and checked (through /proc/self/fd) and
    # keeps its own descriptor; ours is closed once it has.
    with store.open(rec) as video:
        return Replay(fd_path(video), start=start)


def _part(jpeg: bytes, start_ts: float, seconds: float) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            f"X-Timestamp: {start_ts + seconds:.6f}\r\nX-Offset: {seconds!r}\r\n\r\n")
    return b"".join((head.encode("ascii"), jpeg, b"\r\n"))


async def _replay_parts(replay: Replay, start_ts: float, speed: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    origin = None
    try:
        while batch := await asyncio.to_thread(replay.next_batch):
            for seconds, jpeg in batch:
                if origin is None:
                    origin = loop.time() - seconds / speed
                delay = origin + seconds / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield _part(jpeg, start_ts, seconds)
    finally:
        # Do not wait here (the client may be gone); a thread closes the file.
        loop.run_in_executor(None, replay.close)


_STILL_HEADERS = {
    "X-Timestamp": "The frame's wall-clock time (Unix seconds)",
    "X-Offset": "The frame's time in seconds into the recording",
    "X-Previous-Offset": "The previous frame's `X-Offset` (absent on the first frame)",
    "X-Next-Offset": "The next frame's `X-Offset` (absent on the last frame so far)",
    "X-Recording-Start": "The recording's start (Unix seconds)",
}


@router.get(
    "/api/recordings/{stream}/{file}/frame",
    response_class=Response,
    responses={
        200: {"description": "The frame on screen at `t` as one JPEG, with its time and "
              "its neighbours' times for stepping frame by frame",
              "content": {"image/jpeg": _BINARY},
              "headers": {name: {"description": text, "schema": {"type": "string"}}
                          for name, text in _STILL_HEADERS.items()}},
        400: {"model": ErrorBody, "description": "`invalid_stream_name`; "
              "`invalid_parameters`: `t` missing, not a number, below 0 or above 10,000,000"},
        404: _FILE[404],
        409: {"model": ErrorBody, "description": "`unreadable`: no frame can be read yet "
              "(a segment opened a moment ago)"},
        503: _FILE[503],
    },
)
async def recording_frame(
    request: Request,
    stream: str,
    file: str,
    t: float = Query(ge=0, le=MAX_OFFSET, allow_inf_nan=False,
                     description="Seconds into the recording: the last frame that started "
                     "at or before it (the last frame past the end)"),
) -> Response:
    """One frame of a recording as a JPEG; ``X-Previous-Offset`` and ``X-Next-Offset``
    are the ``t`` of the frames before and after it."""
    store, rec = await _local_or_proxied(request, stream, file, "/frame", ("t",))
    if store is None:
        return rec  # another node's answer
    start_ts = await _recording_start(store, rec)
    try:
        still = await asyncio.to_thread(_still, store, rec, t)
    except NotFound:
        raise
    except Exception as exc:
        raise _unreadable(rec, exc) from None
    if still is None:
        raise _unreadable(rec, ValueError("it holds no frame yet"))
    headers = {"Cache-Control": "no-cache", "X-Recording-Start": repr(start_ts),
               "X-Timestamp": f"{start_ts + still.seconds:.6f}", "X-Offset": repr(still.seconds)}
    if still.previous is not None:
        headers["X-Previous-Offset"] = repr(still.previous)
    if still.next is not None:
        headers["X-Next-Offset"] = repr(still.next)
    return Response(still.jpeg, media_type="image/jpeg", headers=headers)


def _still(store: RecordingStore, rec: RecordingFile, seconds: float) -> Still | None:
    with store.open(rec) as video:
        return frame_at(fd_path(video), seconds)
