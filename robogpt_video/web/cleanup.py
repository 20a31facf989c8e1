"""``POST /api/cleanup/run``: run the inactive-stream and recording sweeps now."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from .schemas import _Open

router = APIRouter()


class RemovedStream(_Open):
    name: str
    inactive_seconds: float


class RemovedRecording(_Open):
    stream: str
    file: str
    size_bytes: int
    start_time: str | None
    end_time: str | None
    status: str | None
    reason: str


class DiskReport(_Open):
    free_bytes: int
    free_bytes_after: int
    recordings_bytes: int | None
    recordings_bytes_after: int | None
    max_total_bytes: int
    min_free_bytes: int
    recording_paused: bool


class CleanupResult(_Open):
    status: str = "success"
    dry_run: bool
    streams: list[RemovedStream]
    recordings: list[RemovedRecording]
    directories: list[str]
    freed_bytes: int
    disk: DiskReport


@router.post(
    "/api/cleanup/run",
    response_model=CleanupResult,
    tags=["cleanup"],
)
async def run_cleanup(
    request: Request,
    dry_run: bool = Query(False, description="Only report what would be removed"),
) -> dict:
    """Remove inactive streams, expired recordings and (if over a disk limit) the oldest."""
    return await request.app.state.runtime.cleanup.run_now(dry_run)
