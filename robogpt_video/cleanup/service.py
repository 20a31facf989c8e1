"""The cleanup service: idle streams every interval, retention daily, and a disk guard.

Decisions come from :mod:`.policy`; every file-system call (listing, stat, unlink,
statvfs) runs in a worker thread via :func:`asyncio.to_thread`, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ..aio import cancel_and_wait
from ..config import Settings
from ..recording.store import RecordingStore
from ..streams import StreamRegistry
from . import disk
from .policy import (
    GIB,
    GuardPlan,
    Segment,
    expired,
    free_space_needed,
    inactive_streams,
    next_daily_run,
    parse_hhmm,
    plan_disk_guard,
)

log = logging.getLogger("robogpt_video.cleanup")


class CleanupService:
    """Removes idle streams, deletes expired recordings and keeps the disk from filling."""

    def __init__(
        self,
        settings: Settings,
        registry: StreamRegistry,
        recorder: Callable[[], Any] = lambda: None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.registry = registry
        self.store = RecordingStore(settings.recording.directory)
        self.next_retention: datetime | None = None
        # A "recording" segment untouched this long is a crash leftover, not a live file:
        # the recorder writes every frame and closes a segment after idle_close_seconds.
        self.grace = max(60.0, 2 * settings.recording.idle_close_seconds)
        self._recorder = recorder  # a getter: the recorder may be built after us, or never
        self._clock = clock
        self._at = parse_hhmm(settings.cleanup.schedule_time)
        self._cache = disk.SidecarCache()
        self._lock = asyncio.Lock()  # one disk sweep at a time (schedule vs. API)
        self._pause_reason: str | None = None
        #: Bytes of recordings (video + sidecars) at the last listing, less what that
        #: sweep deleted, and when it was listed (epoch seconds); ``None`` before one.
        self.recordings_bytes: int | None = None
        self.recordings_listed_at: float | None = None
        self._task: asyncio.Task | None = None

    # -- start / stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loop; its first act is a retention sweep."""
        self.next_retention = next_daily_run(self._local_now(), self._at)
        self._task = asyncio.create_task(self._run(), name="cleanup")

    async def stop(self) -> None:
        """Cancel the loop and wait for it (a file operation in a thread finishes alone)."""
        await cancel_and_wait(self._task)
        self._task = None

    def problems(self) -> list[str]:
        """Why /health is degraded because of us: disk space short.

        With a recorder, its pause is the problem it reports itself (not twice).
        """
        if self._pause_reason and self._recorder() is None:
            return [f"disk space low: {self._pause_reason}"]
        return []

    async def _run(self) -> None:
        await self._attempt("start-up retention", lambda: self.sweep_disk(retention=True))
        while True:
            if any(self._limits()):
                await self._attempt("disk guard", lambda: self.sweep_disk(retention=False))
            await asyncio.sleep(self._delay())
            try:
                self.sweep_streams()
            except Exception:
                log.exception("inactive-stream sweep failed; retrying next interval")
            if self._local_now() >= self.next_retention:
                self.next_retention = next_daily_run(self._local_now(), self._at)
                await self._attempt("daily retention", lambda: self.sweep_disk(retention=True))

    @staticmethod
    async def _attempt(what: str, step: Callable[[], Awaitable[object]]) -> None:
        # A failing sweep is logged and tried again on the next round, never fatal.
        try:
            await step()
        except Exception:
            log.exception("%s failed; trying again next interval", what)

    def _local_now(self) -> datetime:
        return datetime.fromtimestamp(self._clock())  # naive local wall-clock time

    def _delay(self) -> float:
        until_daily = self.next_retention.timestamp() - self._clock()
        return max(0.0, min(self.settings.cleanup.interval_seconds, until_daily))

    # -- sweeps ------------------------------------------------------------------------

    def sweep_streams(self, dry_run: bool = False) -> list[dict]:
        """Remove streams with no frame for ``streams.timeout_seconds``; returns them."""
        timeout = self.settings.streams.timeout_seconds
        now = self._clock()
        idle = {stream.name: stream.inactive_seconds(now) for stream in self.registry}
        names = inactive_streams(idle, timeout)
        if not dry_run:
            for name in names:  # the registry logs the one line per stream, with this reason
                reason = f"inactive for {idle[name]:.1f} s, timeout {timeout:g} s"
                if self.registry.may_expire is None or self.registry.may_expire(name):
                    self.registry.remove(name, reason)
        return [{"name": name, "inactive_seconds": round(idle[name], 3)} for name in names]

    async def sweep_disk(self, *, retention: bool, dry_run: bool = False) -> dict:
        """Apply retention (if asked) and the disk guard; returns what went (or would go)."""
        async with self._lock:
            free = await asyncio.to_thread(disk.free_bytes, self.store.root)
            listing = retention or self._guard_needs_listing(free)
            segments = await self._scan() if listing else []
            now = self._clock()
            doomed = expired(segments, now, self._retention_days, self.grace) if retention else []
            plan = self._plan_guard(segments, doomed, free)
            chosen = [(s, self._retention_reason) for s in doomed]
            chosen += [(s, "disk guard") for s in plan.delete]
            live = {stream.name for stream in self.registry}
            work = self._preview if dry_run else self._delete
            removed, dirs = await asyncio.to_thread(work, chosen, live, retention)
            if not dry_run:
                self._apply_pause(plan)
                if listing:
                    freed = sum(item["size_bytes"] for item in removed)
                    self.recordings_bytes = sum(s.size for s in segments) - freed
                    self.recordings_listed_at = now
        if retention and not dry_run:
            self._log_summary(removed, dirs, len(segments))
        return {
            "recordings": removed,
            "directories": dirs,
            "disk": self._disk_report(plan, free, segments if listing else None),
        }

    async def run_now(self, dry_run: bool) -> dict:
        """Both sweeps at once (``POST /api/cleanup/run``)."""
        streams = self.sweep_streams(dry_run)
        result = await self.sweep_disk(retention=True, dry_run=dry_run)
        freed = sum(item["size_bytes"] for item in result["recordings"])
        return {"status": "success", "dry_run": dry_run, "streams": streams, **result,
                "freed_bytes": freed}

    # -- helpers -----------------------------------------------------------------------

    @property
    def _retention_days(self) -> float:
        return self.settings.recording.retention_days

    @property
    def _retention_reason(self) -> str:
        return f"older than recording.retention_days = {self._retention_days:g}"

    def _limits(self) -> tuple[int, int]:
        recording = self.settings.recording
        return int(recording.max_total_gb * GIB), int(recording.min_free_gb * GIB)

    def _guard_needs_listing(self, free: int) -> bool:
        max_total, min_free = self._limits()
        paused = self._pause_reason is not None
        return max_total > 0 or (min_free > 0 and free < free_space_needed(min_free, paused))

    def _plan_guard(self, segments: list[Segment], doomed: list[Segment], free: int) -> GuardPlan:
        # The guard plans on what retention leaves, with the space retention frees.
        gone = {s.path for s in doomed}
        max_total, min_free = self._limits()
        return plan_disk_guard(
            [s for s in segments if s.path not in gone],
            now=self._clock(),
            grace=self.grace,
            free_bytes=free + sum(s.size for s in doomed),
            max_total_bytes=max_total,
            min_free_bytes=min_free,
            paused=self._pause_reason is not None,
        )

    async def _scan(self) -> list[Segment]:
        # Asked before listing: a segment opened after this is fresh, so is_busy() spares it.
        # If the recorder cannot say what is open, this raises and nothing is deleted.
        recorder = self._recorder()
        open_paths = recorder.open_paths() if recorder is not None else ()

        def scan() -> list[Segment]:  # os.path.abspath may ask the OS (getcwd): off the loop
            normalized = frozenset(disk.normalize(p) for p in open_paths)
            return disk.scan(self.store, self._cache, normalized)

        return await asyncio.to_thread(scan)

    def _delete(self, chosen: list[tuple[Segment, str]], live: set[str], prune: bool):
        removed = disk.delete_segments(self.store, chosen)
        dirs = disk.prune_dirs(self.store, live) if prune or removed else []
        return removed, dirs

    def _preview(self, chosen: list[tuple[Segment, str]], live: set[str], prune: bool):
        removed = [disk.describe(segment, why) for segment, why in chosen]
        doomed = [segment for segment, _ in chosen]
        dirs = disk.dirs_left_empty(self.store, doomed, live) if prune or removed else []
        return removed, dirs

    def _apply_pause(self, plan: GuardPlan) -> None:
        recorder = self._recorder()
        if plan.pause:
            reason = (
                f"{disk.human(plan.free_after)} free for {self.store.root}, below "
                f"recording.min_free_gb = {self.settings.recording.min_free_gb:g} GiB, and no "
                f"finished recording is left to delete"
            )
            if self._pause_reason is None:
                if recorder is None:  # the recorder logs and reports its own pause
                    log.warning("disk space low: %s", reason)
                else:
                    recorder.pause(reason)
            self._pause_reason = reason
        elif self._pause_reason is not None:
            self._pause_reason = None
            log.info("free space is back (%s): recording resumes", disk.human(plan.free_after))
            if recorder is not None:
                recorder.resume()

    def _log_summary(self, removed: list[dict], dirs: list[str], listed: int) -> None:
        freed = sum(item["size_bytes"] for item in removed)
        log.info(
            "cleanup of %s: deleted %d recordings (%s), removed %d empty folders, kept %d",
            self.store.root,
            len(removed),
            disk.human(freed),
            len(dirs),
            listed - len(removed),
        )

    def _disk_report(self, plan: GuardPlan, free: int, listed: list[Segment] | None) -> dict:
        max_total, min_free = self._limits()
        return {
            "free_bytes": free,
            "free_bytes_after": plan.free_after,
            "recordings_bytes": sum(s.size for s in listed) if listed is not None else None,
            "recordings_bytes_after": plan.total_after if listed is not None else None,
            "max_total_bytes": max_total,
            "min_free_bytes": min_free,
            "recording_paused": plan.pause,
        }
