"""Cleanup decisions as pure functions: no clock, no disk, no event loop.

Each function takes "now" (epoch seconds, or a local wall-clock datetime for the daily
schedule) and a listing of recordings, and returns what to do. The service in
:mod:`robogpt_video.cleanup.service` gathers the inputs and carries the decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path

DAY = 86_400.0
GIB = 1024**3  # max_total_gb / min_free_gb count GiB, as `df -h` does
#: While recording is paused for space, resume only once free space is this much above
#: min_free_gb, so the recorder does not flap between pause and resume every interval.
RESUME_HEADROOM = 1.05
#: Statuses of a segment that is (or was, before a crash) being written.
WRITING = frozenset({None, "recording"})


@dataclass(frozen=True, slots=True)
class Segment:
    """One recording as cleanup sees it: where it is, how old, how big, whether open."""

    stream: str
    path: Path
    start: float  # epoch seconds, from the file name
    end: float  # epoch seconds, see segment_end()
    size: int  # bytes of video + sidecar
    mtime: float  # the video file's modification time
    status: str | None = None  # sidecar "status"; None when the sidecar is missing
    open: bool = False  # in the recorder's open_paths()


@dataclass(frozen=True, slots=True)
class GuardPlan:
    """What the disk guard decided: segments to delete, and whether recording must pause."""

    delete: list[Segment] = field(default_factory=list)
    pause: bool = False
    total_after: int = 0
    free_after: int = 0


def inactive_streams(idle_seconds: Mapping[str, float], timeout: float) -> list[str]:
    """Names of streams that have had no frame for ``timeout`` seconds or more, sorted."""
    return sorted(name for name, idle in idle_seconds.items() if idle >= timeout)


def parse_hhmm(value: str) -> time:
    """``"03:00"`` as a :class:`datetime.time`."""
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def next_daily_run(now: datetime, at: time) -> datetime:
    """The first wall-clock time ``at`` strictly after ``now`` (both local, naive)."""
    candidate = datetime.combine(now.date(), at)
    if candidate <= now:
        candidate = datetime.combine(now.date() + timedelta(days=1), at)
    return candidate


def parse_iso(value: object) -> float | None:
    """An ISO-8601 timestamp (``...Z`` or with offset) as epoch seconds, else ``None``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def segment_end(sidecar: Mapping | None, mtime: float, start: float) -> float:
    """When a segment ended: the later of its sidecar's ``end_time`` and its file's mtime.

    Taking the later one means a file that is still changing is never "old", whatever
    a stale sidecar says; a file whose mtime was reset (copied) falls back on end_time.
    """
    end = parse_iso(sidecar.get("end_time")) if sidecar else None
    return max(end if end is not None else start, mtime)


def is_busy(segment: Segment, now: float, grace: float) -> bool:
    """True if the segment may still be written: open, or "recording" and touched lately.

    A segment whose sidecar says ``recording`` (or has none yet) but whose file has not
    changed for ``grace`` seconds is a leftover of a crash, not a live one.
    """
    if segment.open:
        return True
    return segment.status in WRITING and now - segment.mtime < grace


def expired(
    segments: Iterable[Segment], now: float, retention_days: float, grace: float
) -> list[Segment]:
    """Segments whose end is more than ``retention_days`` ago (0 keeps everything)."""
    if retention_days <= 0:
        return []
    cutoff = now - retention_days * DAY
    return [s for s in segments if s.end < cutoff and not is_busy(s, now, grace)]


def free_space_needed(min_free_bytes: int, paused: bool) -> int:
    """Free bytes the guard wants: the limit, plus headroom before resuming after a pause."""
    return int(min_free_bytes * RESUME_HEADROOM) if paused else min_free_bytes


def plan_disk_guard(
    segments: Iterable[Segment],
    *,
    now: float,
    grace: float,
    free_bytes: int,
    max_total_bytes: int,
    min_free_bytes: int,
    paused: bool,
) -> GuardPlan:
    """Delete the oldest idle segments until the total is under its cap and enough is free.

    Either limit is off at 0. If free space is still short with nothing left to delete,
    the plan says pause; once paused, resuming needs ``RESUME_HEADROOM`` above the limit.
    """
    listing = sorted(segments, key=lambda s: (s.start, s.path.name))
    total = sum(s.size for s in listing)
    free = free_bytes
    need_free = free_space_needed(min_free_bytes, paused)

    def short() -> bool:
        over = max_total_bytes > 0 and total > max_total_bytes
        return over or (min_free_bytes > 0 and free < need_free)

    chosen: list[Segment] = []
    for segment in listing:
        if not short():
            break
        if is_busy(segment, now, grace):
            continue
        chosen.append(segment)
        total -= segment.size
        free += segment.size
    pause = min_free_bytes > 0 and free < need_free
    return GuardPlan(chosen, pause, total, free)
