"""Clip export: a time range of a stream's recordings as H.264 MP4 (docs/clips.md).

``POST /api/clips`` asks for one (202 with the job, 200 if it is cached), ``GET
/api/clips/{id}`` follows its progress, ``GET /api/clips/{id}.mp4`` downloads it (with
``Range``). Each needs ``playback`` on the clip's stream; the stream is not in these
paths, so the access rule asks for ``playback`` on some stream and the handler checks
the clip's own stream.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import FileResponse

from ..errors import ApiError, Forbidden, NotFound
from ..recording.clip_jobs import ClipJob, ClipService
from ..streams import validate_stream_name
from .access import current_principal
from .recordings import _DOWNLOAD, OpenFileResponse
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


_NOT_FOUND = {"model": ErrorBody, "description": "`not_found`: no such clip"}
_MP4 = {
    200: {**_DOWNLOAD[200], "description": "The clip: `video/mp4` (H.264, `Content-"
          "Disposition: inline`)", "content": {"video/mp4": _DOWNLOAD[200]["content"]["video/mp4"]}},
    206: {**_DOWNLOAD[206], "content": {key: value for key, value in _DOWNLOAD[206]["content"].items()
                                        if key != "application/json"}},
    400: {"model": ErrorBody, "description": "`invalid_range`: a malformed `Range` header"},
    404: _NOT_FOUND,
    409: {"model": ErrorBody, "description": "`clip_not_ready`: queued, running or failed"},
    416: _DOWNLOAD[416],
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
              "clips are waiting, with `Retry-After`"},
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
    job, cached = await service(request).request(body.stream, start, end)
    response.status_code = 200 if cached else 202
    return job.as_dict()


async def _job(request: Request, clip_id: str) -> ClipJob:
    job = await service(request).get(clip_id) if _ID.fullmatch(clip_id) else None
    if job is None:
        raise NotFound(f"no clip '{clip_id}'")
    _may_play(request, job.stream)
    return job


# Before /api/clips/{clip_id}, which would take "<id>.mp4" as an id.
@router.get("/api/clips/{clip_id}.mp4", response_class=FileResponse, responses=_MP4)
@router.head("/api/clips/{clip_id}.mp4", response_class=FileResponse, responses=_MP4_HEAD)
async def download_clip(request: Request, clip_id: str) -> FileResponse:
    """The finished clip (``Range`` requests get ``206``)."""
    job = await _job(request, clip_id)
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
    responses={404: _NOT_FOUND},
)
async def clip_status(request: Request, clip_id: str) -> dict:
    """A clip job: its status and progress."""
    return (await _job(request, clip_id)).as_dict()
