"""The JSON API: stream listing, stats, deletion and health (documented at /docs)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from .. import __version__
from ..errors import StreamNotFound
from ..streams import validate_stream_name
from .access import current_principal
from .schemas import ErrorBody, Health, RecentFrames, StreamList, StreamStats, Success

router = APIRouter()
_ERRORS = {
    400: {"model": ErrorBody, "description": "`invalid_stream_name`"},
    404: {"model": ErrorBody, "description": "`stream_not_found`: no such live stream"},
}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _stream(request: Request, name: str):
    validate_stream_name(name)
    stream = request.app.state.runtime.registry.get(name)
    if stream is None:
        raise StreamNotFound(f"stream '{name}' does not exist")
    return stream


def _is_recording(recorder, name: str) -> bool:
    """Whether this node writes a segment of ``name`` now."""
    stats = recorder.stream_stats(name) if recorder is not None else None
    return bool(stats and stats.get("segment"))


@router.get("/api/streams", response_model=StreamList, tags=["streams"])
async def list_streams(request: Request) -> dict:
    """All live streams with their statistics."""
    visible = current_principal.get().can_see("view")
    authenticator = request.app.state.authenticator
    runtime = request.app.state.runtime
    every = await runtime.cluster.list_streams() if runtime.cluster is not None else None
    if every is None:  # one process, or Redis cannot say: this node's streams
        every = [stream.summary() for stream in runtime.registry]
    streams = [s for s in every if not authenticator.enabled or visible(s["name"])]
    streams.sort(key=lambda s: s["name"])
    for summary in streams:  # the dashboard's recording dot (a cluster's: on any node)
        summary["is_recording"] = summary.get("is_recording") or _is_recording(
            runtime.recorder, summary["name"])
    return {"count": len(streams), "streams": streams}


@router.get(
    "/api/streams/{name}/stats", response_model=StreamStats, responses=_ERRORS, tags=["streams"]
)
async def stream_stats(request: Request, name: str) -> dict:
    """Detailed statistics of one stream."""
    runtime = request.app.state.runtime
    recorder = runtime.recorder
    if runtime.cluster is not None:  # every node's part of the stream
        validate_stream_name(name)
        stats = await runtime.cluster.stream_stats(name)
        if stats is not None:
            recording = recorder.stream_stats(name) if recorder is not None else None
            return {**stats, "recording": recording,
                    "is_recording": stats["is_recording"] or _is_recording(recorder, name)}
    stream = _stream(request, name)
    recording = recorder.stream_stats(stream.name) if recorder is not None else None
    return {**stream.stats(), "recording": recording,
            "is_recording": _is_recording(recorder, stream.name)}


@router.get(
    "/api/streams/{name}/frames", response_model=RecentFrames, responses=_ERRORS, tags=["streams"]
)
async def recent_frames(request: Request, name: str) -> dict:
    """The last ``max_buffer_frames`` frames of a stream: arrival time, size, resolution
    and the interval since the one before (the images themselves are not kept)."""
    stream = _stream(request, name)
    frames = stream.recent_frames()
    return {"stream": stream.name, "count": len(frames), "frames": frames}


@router.delete("/api/streams/{name}", response_model=Success, responses=_ERRORS, tags=["streams"])
async def delete_stream(request: Request, name: str) -> dict:
    """Delete a stream: its viewers' responses end and its recording segment is closed
    (with a cluster, on every node)."""
    cluster = request.app.state.runtime.cluster
    if cluster is not None:
        validate_stream_name(name)
        if not await cluster.delete(name, "deleted via API"):
            raise StreamNotFound(f"stream '{name}' does not exist")
        return {"status": "success", "message": f"Stream '{name}' deleted"}
    _stream(request, name)
    request.app.state.runtime.registry.remove(name, "deleted via API")
    return {"status": "success", "message": f"Stream '{name}' deleted"}


@router.get("/health", response_model=Health, response_model_exclude_unset=True, tags=["server"])
async def health(request: Request) -> dict:
    """Health and a summary of limits; ``degraded`` lists its reasons in ``problems``.

    With access control on, a request without credentials gets ``status`` only."""
    runtime = request.app.state.runtime
    settings = runtime.settings
    problems = runtime.problems()
    if request.app.state.authenticator.enabled and not current_principal.get().authenticated:
        return {"status": "degraded" if problems else "healthy"}
    cluster = runtime.cluster
    extra = {}
    if cluster is not None:  # counts of every node, as of the last announcement (≤ 1 s)
        extra = {"node": cluster.node_name, "node_streams": len(runtime.registry)}
    active = len(runtime.registry)
    if cluster is not None and cluster.connected:
        active = max(active, cluster.cluster_streams)
    return {
        **extra,
        "status": "degraded" if problems else "healthy",
        "active_streams": active,
        "max_streams": settings.streams.max_concurrent,
        "recording_enabled": settings.recording.enabled,
        "config": {
            "timeout_seconds": _number(settings.streams.timeout_seconds),
            "max_buffer_frames": settings.streams.max_buffer_frames,
            "retention_days": _number(settings.recording.retention_days),
        },
        "problems": problems,
        "uptime_seconds": round(time.time() - runtime.started_at, 3),
        "viewers": sum(s.viewer_count() for s in runtime.registry),
        "version": __version__,
    }
