"""Response models of the JSON API (they document it at /docs; extra fields pass through)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamSummary(_Open):
    name: str
    created_at: str
    uptime_seconds: float
    total_frames: int
    viewer_count: int
    inactive_seconds: float
    fps: float
    width: int | None = None
    height: int | None = None
    #: This node is writing a recording segment of it now.
    is_recording: bool = False


class StreamList(_Open):
    count: int
    streams: list[StreamSummary]


class StreamStats(StreamSummary):
    last_frame_time: str | None
    buffer_size: int
    max_buffer_frames: int
    has_current_frame: bool
    bytes_in: int
    last_frame_size: int | None
    frames_out: int
    frames_pushed: int
    frames_dropped_slow_viewers: int
    frames_skipped_fps: int = 0
    variants: int = 0
    variant_frames_encoded: int = 0
    variant_frames_skipped_busy: int = 0


class FrameRecord(_Open):
    sequence: int
    time: str
    timestamp: float
    size: int
    width: int
    height: int
    interval_ms: float | None


class RecentFrames(_Open):
    stream: str
    count: int
    frames: list[FrameRecord]


class Success(_Open):
    status: str = "success"
    message: str


class HealthConfig(_Open):
    timeout_seconds: int | float
    max_buffer_frames: int
    retention_days: int | float


class Health(_Open):
    """With access control on and no credentials, only ``status``."""

    status: str
    active_streams: int | None = None
    max_streams: int | None = None
    recording_enabled: bool | None = None
    config: HealthConfig | None = None
    problems: list[str] | None = None
    uptime_seconds: float | None = None
    viewers: int | None = None
    version: str | None = None


class RecordingDeleted(Success):
    freed_bytes: int


class PublishedFrame(_Open):
    """One frame published (a single ``POST /publish/<name>``)."""

    status: str = "success"
    stream: str
    frame_size: int
    sequence: int
    width: int
    height: int


class PublishedFrames(_Open):
    """A long-lived ``multipart/x-mixed-replace`` ingest that ended cleanly."""

    status: str = "success"
    stream: str
    frames: int
    bytes: int


class ErrorBody(BaseModel):
    """Every error: ``error`` is a stable code (README, HTTP API), ``message`` says why."""

    status: str = "error"
    error: str
    message: str
