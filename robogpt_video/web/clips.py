"""Clip export: a time range of a stream's recordings as H.264 MP4 (docs/clips.md).

``POST /api/clips`` asks for one (202 with the job, 200 if it is cached), ``GET
/api/clips/{id}`` follows its progress, ``GET /api/clips/{id}.mp4`` downloads it (with
``Range``). Each needs ``playback`` on the clip's stream; the stream is not in these
paths, so the access rule asks for ``playback`` on some stream and the handler checks
the clip's own stream.

With a cluster (docs/cluster.md "Clips on every node"), ``POST`` is made by the node
that has most of the range's recordings (proxied there, like a recording's download),
and a clip id this node does not know is asked of the other nodes and proxied.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import FileResponse

from ..errors import ApiError, Forbidden, NotFound
from ..recording.clip_jobs import ClipJob, ClipService
from ..recording.store import sidecar_time
from ..streams import validate_stream_name
from .access import current_principal
from .peers import NODE_HEADER, Peers
from .recordings import _DOWNLOAD, OpenFileResponse, _everything, _listing, _peers, _store
from .schemas import ErrorBody

router = APIRouter(tags=["clips"])
_ID = re.compile(r"[0-9a-f]{32}")


class ClipRequest(BaseModel):
    """The clip asked for: a stream and a time range."""

    model_config = ConfigDict(extra="forbid")

    stream: str = Field(description="The stream's name")
    start: float | str = Field(description="Unix seconds, or ISO 8601 (UTC without a zone)")
    end: float | str = Field(description="Unix seconds, or ISO 8601; after start")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _not_bool(cls, value):
        if isinstance(value, bool):  # JSON true is no time
            raise ValueError("must be Unix seconds or an ISO 8601 time")
        return value


class ClipJobBody(BaseModel):
    """A clip job: queued, running (with progress), ready (download ``url``) or failed."""

    id: str
    stream: str
    start: float
    end: float
    status: Literal["queued", "running", "ready", "failed"]
    progress: float = Field(ge=0, le=1, description="frames_done / frames_total")
    frames_done: int
    frames_total: int = Field(description="Frames of the range; 0 until counted")
    error: str | None
    url: str = Field(description="Where the MP4 is, once ready")
    size_bytes: int | None


_NOT_FOUND = {"model": ErrorBody, "description": "`not_found`: no such clip (on any node)"}
_UNREACHABLE = {"model": ErrorBody, "description": "`node_unreachable` (cluster): not on the "
                "nodes that answered, and a node that may have it did not answer"}
_MP4 = {
    200: {**_DOWNLOAD[200], "description": "The clip: `video/mp4` (H.264, `Content-"
          "Disposition: inline`)", "content": {"video/mp4": _DOWNLOAD[200]["content"]["video/mp4"]}},
    206: {**_DOWNLOAD[206], "content": {key: value for key, value in _DOWNLOAD[206]["content"].items()
                                        if key != "application/json"}},
    400: {"model": ErrorBody, "description": "`invalid_range`: a malformed `Range` header"},
    404: _NOT_FOUND,
    409: {"model": ErrorBody, "description": "`clip_not_ready`: queued, running or failed"},
    416: _DOWNLOAD[416],
    503: _UNREACHABLE,
}
_MP4_HEAD = {
    status: {key: value for key, value in answer.items() if key not in ("content", "model")}
    for status, answer in _MP4.items()
}


def service(request: Request) -> ClipService:
    return request.app.state.runtime.clips


def _may_play(request: Request, stream: str) -> None:
    """403 unless the principal has ``playback`` on ``stream`` (access control on)."""
    if not request.app.state.authenticator.enabled:
        return
    principal = current_principal.get()
    if not principal.may("playback", stream):
        raise Forbidden(f"user '{principal.name}' has no playback permission on stream '{stream}'")


def _time(value: float | str, field: str) -> float:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(f"{field}={value!r} is neither Unix seconds nor an ISO 8601 time "
                           "(e.g. 2026-01-21T10:30:00Z)", code="invalid_time") from None
        if parsed.tzinfo is None:  # like the recordings' names: UTC
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise ApiError(f"{field} must be a finite number of seconds", code="invalid_time")
    return float(value)


@router.post(
    "/api/clips",
    status_code=202,
    response_model=ClipJobBody,
    responses={
        200: {"model": ClipJobBody, "description": "Already made: the cached clip, `ready`"},
        202: {"description": "The job, `queued` or `running` (the same job for the same "
              "range while it runs): follow it at `GET /api/clips/{id}`"},
        400: {"model": ErrorBody, "description": "`invalid_parameters`: not a JSON object "
              "with `stream`, `start`, `end`; `invalid_stream_name`; `invalid_time`; "
              "`invalid_range`: `end` not after `start`; `range_too_long`: over "
              "`clips.max_seconds`"},
        404: {"model": ErrorBody, "description": "`not_found`: no recording of the stream "
              "overlaps the range"},
        503: {"model": ErrorBody, "description": "`too_many_clip_jobs`: `clips.max_queued` "
              "clips are waiting, with `Retry-After`; `node_unreachable` (cluster): no node "
              "that answered has recordings of the range, and a node did not answer"},
    },
)
async def create_clip(request: Request, response: Response, body: ClipRequest) -> dict:
    """Make an H.264 MP4 of a time range of a stream's recordings (across segments),
    one that plays in a browser's `<video>` and on phones."""
    validate_stream_name(body.stream)
    _may_play(request, body.stream)
    start, end = _time(body.start, "start"), _time(body.end, "end")
    if end <= start:
        raise ApiError(f"end ({end}) must be after start ({start})", code="invalid_range")
    longest = request.app.state.runtime.settings.clips.max_seconds
    if end - start > longest:
        raise ApiError(f"the range lasts {end - start:g} s, more than clips.max_seconds "
                       f"= {longest:g}", code="range_too_long")
    peers = _peers(request)
    if peers is not None:
        elsewhere = await _maker(request, peers, body.stream, start, end)
        if elsewhere is not None:  # only what the route needs: no credentials, no query
            return await peers.proxy("POST", *elsewhere, "/api/clips", request.headers,
                                     body={"stream": body.stream, "start": start, "end": end},
                                     what="the recordings")
    job, cached = await service(request).request(body.stream, start, end)
    response.status_code = 200 if cached else 202
    return job.as_dict()


def _seconds(entries: list[dict], start: float, end: float, now: float) -> float:
    """How much of ``[start, end)`` the recordings of a listing cover (by their times)."""
    covered = 0.0
    for entry in entries:
        begins = sidecar_time(entry.get("start_time"))
        if begins is not None:
            ends = sidecar_time(entry.get("end_time")) or now  # still open: until now
            covered += max(0.0, min(end, ends) - max(start, begins))
    return covered


async def _maker(request: Request, peers: Peers, stream: str, start: float,
                 end: float) -> tuple[str, str] | None:
    """The other node (name, URL) that should make this clip, or None for this one: the
    node whose recordings cover most of the range (this one on a tie), from every
    node's listing. 503 if none has any and a node did not answer."""
    others, _ = await peers.others()
    if not others:  # alone, or Redis cannot say: this node's recordings
        return None
    since, until = (datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
                    for t in (start, end))
    mine = await asyncio.to_thread(_listing, _store(request), stream, start, end, set(),
                                   _everything)
    theirs, _, missing = await peers.listings(others, {"stream": stream, "since": since,
                                                       "until": until})
    now = time.time()
    best, most = None, (_seconds(mine, start, end, now), len(mine))
    for name in sorted(others):
        entries = [e for e in theirs if e.get("node") == name]
        covered = (_seconds(entries, start, end, now), len(entries))
        if covered > most:
            best, most = name, covered
    if best is None and not mine and missing:
        raise ApiError(f"no recording of stream '{stream}' overlaps the range on the nodes "
                       "that answered; not answering: "
                       + "; ".join(f"{name}: {why}" for name, why in sorted(missing.items())),
                       code="node_unreachable", status_code=503)
    return (best, others[best]) if best is not None else None


async def _job(request: Request, clip_id: str) -> ClipJob | tuple[str, str, dict]:
    """The clip job this node knows, or (node, URL, job) of the node that knows it."""
    job = await service(request).get(clip_id) if _ID.fullmatch(clip_id) else None
    if job is not None:
        _may_play(request, job.stream)
        return job
    peers = _peers(request)
    if peers is None or not _ID.fullmatch(clip_id):
        raise NotFound(f"no clip '{clip_id}'")
    node, url, found = await peers.find_clip(clip_id)
    _may_play(request, found["stream"])
    return node, url, found


# Before /api/clips/{clip_id}, which would take "<id>.mp4" as an id.
@router.get("/api/clips/{clip_id}.mp4", response_class=FileResponse, responses=_MP4)
@router.head("/api/clips/{clip_id}.mp4", response_class=FileResponse, responses=_MP4_HEAD)
async def download_clip(request: Request, clip_id: str) -> FileResponse:
    """The finished clip (``Range`` requests get ``206``)."""
    job = await _job(request, clip_id)
    if isinstance(job, tuple):  # another node's clip: its answer
        node, url, _ = job
        return await request.app.state.peers.proxy(
            request.method, node, url, f"/api/clips/{clip_id}.mp4", request.headers,
            what="the clip")
    if job.status != "ready":
        raise ApiError(f"clip '{clip_id}' is {job.status}, not ready", code="clip_not_ready",
                       status_code=409)
    opened = await asyncio.to_thread(service(request).open_video, clip_id)
    if opened is None:  # removed from the cache since
        raise NotFound(f"no clip '{clip_id}'")
    file, info = opened
    name = f"{job.stream}_{datetime.fromtimestamp(job.start, timezone.utc):%Y%m%d_%H%M%S}.mp4"
    return OpenFileResponse(file, info, media_type="video/mp4", filename=name,
                            content_disposition_type="inline")


@router.get(
    "/api/clips/{clip_id}",
    response_model=ClipJobBody,
    responses={404: _NOT_FOUND, 503: _UNREACHABLE},
)
async def clip_status(request: Request, response: Response, clip_id: str) -> dict:
    """A clip job: its status and progress."""
    job = await _job(request, clip_id)
    if isinstance(job, tuple):  # another node's job, as it answered
        node, _, found = job
        response.headers[NODE_HEADER] = node
        return found
    return job.as_dict()
