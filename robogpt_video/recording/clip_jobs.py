"""Clip jobs: asked for over the API, made one at a time in a worker thread, cached.

A job's id is its cache key (``clips.clip_id``): asking again for the same range of
the same segments gives the same job while it runs and the cached clip once it is
made. Jobs live in this process; finished clips live in the cache folder, where any
process (and this one after a restart) finds them. See docs/clips.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..aio import cancel_and_wait
from ..config import Settings
from ..errors import ApiError, NotFound
from . import clips
from .store import RecordingStore

log = logging.getLogger(__name__)

QUEUED, RUNNING, READY, FAILED = "queued", "running", "ready", "failed"
KEEP_FINISHED = 256  # finished jobs remembered in memory (clips stay on disk anyway)
_NICE = 10  # clip threads yield the CPU to ingest, live view and recording


class TooManyClipJobs(ApiError):
    status_code = 503
    code = "too_many_clip_jobs"
    retry_after = 10


@dataclass(eq=False)
class ClipJob:
    """One clip being made (or made, or failed)."""

    id: str
    stream: str
    start: float
    end: float
    status: str = QUEUED
    frames_done: int = 0
    frames_total: int = 0
    error: str | None = None
    size_bytes: int | None = None
    sources: list[clips.Source] = field(default_factory=list, repr=False)
    #: A segment it reads that was deleted while it ran: its clip is not kept.
    deleted_source: str | None = None

    @property
    def progress(self) -> float:
        if self.status == READY:
            return 1.0
        if not self.frames_total:
            return 0.0
        return min(1.0, self.frames_done / self.frames_total)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "stream": self.stream,
            "start": self.start,
            "end": self.end,
            "status": self.status,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "error": self.error,
            "url": f"/api/clips/{self.id}.mp4",
            "size_bytes": self.size_bytes,
        }

    def frame_done(self) -> None:
        self.frames_done += 1  # the worker thread's; readers see a whole int

    @classmethod
    def from_cache(cls, cid: str, meta: dict) -> "ClipJob":
        frames = meta.get("frames_total")
        return cls(
            id=cid,
            stream=str(meta.get("stream")),
            start=float(meta.get("start", 0.0)),
            end=float(meta.get("end", 0.0)),
            status=READY,
            frames_done=frames if isinstance(frames, int) else 0,
            frames_total=frames if isinstance(frames, int) else 0,
            size_bytes=meta.get("size_bytes"),
        )


def _lower_priority() -> None:
    """A clip thread's initializer: nice it (Linux nices threads one by one, and the
    encoder's own threads inherit it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
    except OSError:
        pass


class ClipService:
    """Clip jobs and the clip cache of one process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config = settings.clips
        self.store = RecordingStore(settings.recording.directory)
        self.cache = Path(self.config.directory or settings.recording.directory / ".clips")
        self.jobs: dict[str, ClipJob] = {}
        self._slots = asyncio.Semaphore(self.config.max_jobs)
        self._cancel = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self.started_at = time.time()

    # -- start / stop --------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            self.config.max_jobs, thread_name_prefix="clip", initializer=_lower_priority
        )
        removed = await asyncio.to_thread(clips.remove_temps, self.cache, self.started_at)
        if removed:
            log.info("clips: %d unfinished temp file(s) removed", removed)
        self._sweeper = asyncio.create_task(self._sweep_often(), name="clip-cache")

    async def stop(self) -> None:
        """Stop the jobs (each ends at its next frame, its temp file removed)."""
        self._cancel.set()
        await cancel_and_wait(self._sweeper)
        for task in list(self._tasks):
            await cancel_and_wait(task)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    async def _sweep_often(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("clip cache sweep failed; trying again later")
            await asyncio.sleep(self.settings.cleanup.interval_seconds)

    async def sweep(self) -> list[str]:
        """Apply ``clips.cache_mb`` and recording retention to the cache."""
        days = self.settings.recording.retention_days
        expire = time.time() - days * 86400 if days > 0 else None
        keep = frozenset(cid for cid, job in self.jobs.items() if job.status in (QUEUED, RUNNING))
        cap = int(self.config.cache_mb * 1024 * 1024)
        removed = await asyncio.to_thread(clips.prune, self.cache, cap, expire, keep)
        for cid in removed:
            log.info("clips: removed %s from the cache", cid)
            job = self.jobs.get(cid)
            if job is not None and job.status == READY:
                del self.jobs[cid]
        return removed

    # -- the API's side ------------------------------------------------------------------

    async def request(self, stream: str, start: float, end: float) -> tuple[ClipJob, bool]:
        """The job for this clip, and whether it was already made (from the cache)."""
        used = await asyncio.to_thread(
            clips.find_sources, self.store, stream, start, end, time.time()
        )
        if not used:
            raise NotFound(f"no recording of stream '{stream}' overlaps the range")
        cid = clips.clip_id(stream, start, end, used)
        job = self.jobs.get(cid)
        if job is not None and job.status in (QUEUED, RUNNING):
            return job, False
        meta = await asyncio.to_thread(clips.read_cached, self.cache, cid)
        job = self.jobs.get(cid)  # another request may have started it meanwhile
        if job is not None and job.status in (QUEUED, RUNNING):
            return job, False
        if meta is not None:
            job = ClipJob.from_cache(cid, meta)
            self._remember(job)
            return job, True
        waiting = sum(1 for j in self.jobs.values() if j.status == QUEUED)
        if waiting >= self.config.max_queued:
            raise TooManyClipJobs(
                f"{waiting} clips are waiting to be made (clips.max_queued): try again later"
            )
        job = ClipJob(cid, stream, start, end, sources=used)
        self._remember(job)
        task = asyncio.create_task(self._run(job), name=f"clip-{cid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, False

    async def get(self, cid: str) -> ClipJob | None:
        """A job of this process, or a clip in the cache (made before, or by another)."""
        job = self.jobs.get(cid)
        if job is not None and job.status != READY:
            return job
        meta = await asyncio.to_thread(clips.read_cached, self.cache, cid)
        if meta is None:
            if job is not None:  # made, then removed from the cache
                self.jobs.pop(cid, None)
            return None
        return job or ClipJob.from_cache(cid, meta)

    async def forget_recording(self, stream: str, name: str) -> list[str]:
        """After the segment ``name`` of ``stream`` was deleted: remove the cached clips
        made from it, and keep none that a job of this process is making from it.
        Returns the ids removed from the cache."""
        for job in self.jobs.values():
            if job.status in (QUEUED, RUNNING) and job.stream == stream \
                    and any(source.recording.name == name for source in job.sources):
                job.deleted_source = name
        removed = await asyncio.to_thread(clips.remove_made_from, self.cache, stream, name)
        for cid in removed:
            log.info("clips: removed %s from the cache: recording %s was deleted", cid, name)
            job = self.jobs.get(cid)
            if job is not None and job.status == READY:
                del self.jobs[cid]
        return removed

    def open_video(self, cid: str):
        """Blocking: the cached video opened, with its status, or ``None``."""
        return clips.open_cached(self.cache, cid)

    def _remember(self, job: ClipJob) -> None:
        self.jobs.pop(job.id, None)
        self.jobs[job.id] = job
        finished = [cid for cid, j in self.jobs.items() if j.status in (READY, FAILED)]
        for cid in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[cid]

    # -- making a clip -------------------------------------------------------------------

    async def _run(self, job: ClipJob) -> None:
        async with self._slots:
            job.status = RUNNING
            loop = asyncio.get_running_loop()
            try:
                job.size_bytes = await loop.run_in_executor(self._executor, self._make, job)
            except clips.ClipFailed as exc:
                job.error, job.status = str(exc), FAILED
            except clips.Cancelled:
                job.error, job.status = "the server stopped before the clip was made", FAILED
            except Exception as exc:
                log.exception("clip %s of %s failed", job.id, job.stream)
                job.error, job.status = f"internal error: {type(exc).__name__}: {exc}", FAILED
            else:
                job.status = READY
            finally:
                job.sources = []
            if job.status == READY and job.deleted_source is not None:
                await asyncio.to_thread(clips.remove_made_from, self.cache, job.stream,
                                        job.deleted_source)
                job.error = (f"recording '{job.deleted_source}' was deleted while the clip "
                             "was made")
                job.status, job.size_bytes = FAILED, None
        if job.status == FAILED:
            log.warning("clip %s of %s failed: %s", job.id, job.stream, job.error)
        else:
            log.info("clip %s of %s made: %d frames, %d bytes", job.id, job.stream,
                     job.frames_total, job.size_bytes)
            await self.sweep()

    def _make(self, job: ClipJob) -> int:
        """In a clip thread: count, encode, move into the cache; the clip's size."""
        if self._cancel.is_set():
            raise clips.Cancelled()
        self.cache.mkdir(parents=True, exist_ok=True)
        counts = clips.count_frames(self.store, job.sources, job.start, job.end, self._cancel)
        job.frames_total = sum(counts)
        if not job.frames_total:
            raise clips.ClipFailed(f"stream '{job.stream}' recorded no frame in the range")
        video = clips.temp_path(self.cache, job.id, clips.VIDEO)
        try:
            written = clips.encode(
                self.store, job.sources, counts, job.start, job.end, video,
                threads=self.config.encoder_threads, on_frame=job.frame_done,
                cancel=self._cancel,
            )
            meta = {"stream": job.stream, "start": job.start, "end": job.end,
                    "frames_total": written, "made_at": time.time(),
                    "sources": [s.identity for s in job.sources]}
            size = clips.publish(self.cache, job.id, video, meta)
        finally:
            video.unlink(missing_ok=True)
        job.frames_total = job.frames_done = written
        return size
