"""Recordings API: list, download (with Range), delete and replay as MJPEG.

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
from starlette.responses import FileResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import ApiError, NotFound
from ..recording.replay import Replay
from ..recording.store import SIDECAR_SUFFIX, RecordingFile, RecordingStore, fd_path
from .access import current_principal
from .mjpeg import CONTENT_TYPE, build_part
from .schemas import ErrorBody, RecordingDeleted

router = APIRouter(tags=["recordings"])
# What each route answers besides 200, for the OpenAPI document (/docs).
_NAME = {400: {"model": ErrorBody, "description": "`invalid_stream_name`"}}
_FILE = {**_NAME, 404: {"model": ErrorBody, "description": "`not_found`: no such recording"}}
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


def _open_paths(request: Request) -> set:
    recorder = request.app.state.runtime.recorder
    return recorder.open_paths() if recorder is not None else set()


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


def _parse_sidecar_time(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _entry(store: RecordingStore, rec: RecordingFile, open_paths: set) -> dict:
    meta = store.read_sidecar(rec) or {}
    info = store.stat(rec)
    size = info.st_size if info is not None else None
    base = f"/api/recordings/{rec.stream}/{rec.name}"
    # A sidecar is trusted for nothing: times that do not parse give way to the file's
    # name (start) or to "unknown" (end), a status that is not text to "unknown".
    start = meta.get("start_time")
    if _parse_sidecar_time(start) is None:
        start = rec.start.isoformat().replace("+00:00", "Z")
    end = meta.get("end_time")
    if _parse_sidecar_time(end) is None:
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
    start = _parse_sidecar_time(entry["start_time"]) or 0.0
    end = _parse_sidecar_time(entry.get("end_time")) or time.time()  # still open: until now
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
    """Recordings on disk, newest first, with their sidecar metadata and size."""
    since_ts, until_ts = _parse_time(since, "since"), _parse_time(until, "until")
    store = _store(request)
    if stream:
        store.stream_dir(stream)  # validates the name before it touches a path
    if request.app.state.authenticator.enabled:
        visible = current_principal.get().can_see("playback")
    else:
        visible = _everything
    entries = await asyncio.to_thread(
        _listing, store, stream or None, since_ts, until_ts, _open_paths(request), visible
    )
    return {"count": len(entries), "recordings": entries}


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
    store = _store(request)
    rec = await asyncio.to_thread(store.resolve, stream, file)
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
    """Delete one recording and its sidecar (``409`` while it is being written)."""
    store = _store(request)
    rec = await asyncio.to_thread(store.resolve, stream, file)
    if rec.path in _open_paths(request):
        raise ApiError(
            f"recording '{rec.name}' is being written; it can be deleted once it closes",
            code="recording_in_use",
            status_code=409,
        )
    freed = await asyncio.to_thread(store.delete, rec)
    return {"status": "success", "message": f"Recording '{rec.name}' deleted", "freed_bytes": freed}


@router.get(
    "/api/recordings/{stream}/{file}/play",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Live MJPEG at the recorded timing, `X-Recording-Start` its "
              "start (Unix time); each part has `Content-Type`, `Content-Length`, `X-Timestamp`",
              "content": {CONTENT_TYPE: _BINARY}},
        **_FILE,
        409: {"model": ErrorBody, "description": "`unreadable`: no frame can be read yet "
              "(a segment opened a moment ago)"},
    },
)
async def play_recording(request: Request, stream: str, file: str) -> StreamingResponse:
    """The recording replayed as live MJPEG at its recorded timing (any browser plays it)."""
    store = _store(request)
    rec = await asyncio.to_thread(store.resolve, stream, file)
    meta = await asyncio.to_thread(store.read_sidecar, rec) or {}
    start_ts = _parse_sidecar_time(meta.get("start_time")) or rec.start.timestamp()
    try:
        replay = await asyncio.to_thread(_open_replay, store, rec)
    except NotFound:
        raise
    except Exception as exc:  # no readable frame yet (a segment opened a moment ago)
        raise ApiError(
            f"recording '{rec.name}' cannot be read: {exc}", code="unreadable", status_code=409
        ) from None
    headers = {"Cache-Control": "no-cache, no-store", "X-Recording-Start": str(start_ts)}
    return StreamingResponse(
        _replay_parts(replay, start_ts), media_type=CONTENT_TYPE, headers=headers
    )


def _open_replay(store: RecordingStore, rec: RecordingFile) -> Replay:
    # FFmpeg opens the file the store opened and checked (through /proc/self/fd) and
    # keeps its own descriptor; ours is closed once it has.
    with store.open(rec) as video:
        return Replay(fd_path(video))


async def _replay_parts(replay: Replay, start_ts: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    origin = None
    try:
        while batch := await asyncio.to_thread(replay.next_batch):
            for seconds, jpeg in batch:
                if origin is None:
                    origin = loop.time() - seconds
                delay = origin + seconds - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield build_part(jpeg, start_ts + seconds)
    finally:
        # Do not wait here (the client may be gone); a thread closes the file.
        loop.run_in_executor(None, replay.close)
