"""One budget for the JPEG frames the server holds, and memory given back afterwards.

``server.max_frame_memory_mb`` covers the frames held anywhere that can be counted:
each stream's latest frame, upload bodies being read (their declared length), and the
frames the recorder holds (queued for the disk or being written). Only the queued
ones can be let go without refusing a publish, so the recorder drops the oldest of
them while the total is over the budget (``Recorder.frame_published``); publishes are
always accepted. docs/reliability.md has the estimates of what is not counted.

glibc keeps freed heap blocks for reuse (a freed 9.5 MiB frame raises its mmap
threshold, so later big frames come from the heap too). Once a second, in a thread,
:class:`FrameMemory` compares the process's RSS with the frames it holds: when RSS is
:data:`TRIM_STEP` above the frames held plus what stayed after the last trim (at
start: the idle process), it calls ``malloc_trim(0)``, which hands free heap pages
back to the kernel. Fixing the mmap threshold instead cost ≈0.8 ms of page faults per
MiB of every frame above it (docs/bench.md, "Memory under pressure").
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable

from .aio import cancel_and_wait

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Trim once RSS exceeds the frames held by this much more than after the last trim.
TRIM_STEP = 64 * MIB
#: How often RSS is compared with frames held, and the least time between two trims.
CHECK_SECONDS = 1.0
TRIM_MIN_SECONDS = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` (another C library)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class FrameMemory:
    """Frame bytes held by the server against ``server.max_frame_memory_mb``.

    A :class:`~robogpt_video.streams.StreamListener` (it follows each stream's latest
    frame; registered before the recorder, which reads the total) and a runtime
    service (the trimming task). Counters change on the event loop only.
    """

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * MIB)
        self.latest = 0  # bytes of every stream's latest frame
        self.uploads = 0  # declared bytes of upload bodies being read
        #: Bytes the recorder holds (queued or being written); set by the runtime when
        #: recording is on (the budget is enforced by the recorder's queues).
        self.recorder_bytes: Callable[[], int] | None = None
        self.trims = 0
        self._latest: dict[str, int] = {}
        self._trim = _malloc_trim()
        self._task: asyncio.Task | None = None
        self._floor: int | None = None  # RSS less frames held, after the last trim
        self._trimmed_at = 0.0

    # -- StreamListener -------------------------------------------------------------------

    def stream_opened(self, stream) -> None:
        """Nothing held before the first frame."""

    def frame_published(self, stream, frame) -> None:
        """The stream's latest frame is now ``frame``."""
        self.latest += frame.size - self._latest.get(stream.name, 0)
        self._latest[stream.name] = frame.size

    def stream_closed(self, stream, reason: str) -> None:
        """A closed stream holds no latest frame any more."""
        self.latest -= self._latest.pop(stream.name, 0)

    # -- the budget -----------------------------------------------------------------------

    def reading(self, size: int | None) -> "_Reading":
        """``with memory.reading(request.content_length):`` around reading a body."""
        return _Reading(self, size or 0)

    @property
    def unqueued(self) -> int:
        """Frame bytes held outside the recorder: latest frames and uploads being read."""
        return self.latest + self.uploads

    def held(self) -> int:
        """Every frame byte counted against the budget."""
        recorder = self.recorder_bytes() if self.recorder_bytes is not None else 0
        return self.unqueued + recorder

    def problems(self) -> list[str]:
        """Over the budget with nothing the recorder could drop (``/health``)."""
        if self.recorder_bytes is None or self.unqueued <= self.budget:
            return []
        return [
            f"memory: {self.unqueued / MIB:.0f} MiB of frames are held by live streams' "
            f"latest frames and uploads being read, over server.max_frame_memory_mb "
            f"({self.budget / MIB:g} MiB): no frame can wait for the disk"
        ]

    # -- service: give freed memory back ----------------------------------------------------

    async def start(self) -> None:
        """Start watching frames held (and trimming, on glibc)."""
        if self._trim is not None:
            self._task = asyncio.create_task(self._watch(), name="frame-memory")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            # In a thread: /proc is read, and malloc_trim holds each malloc arena's lock
            # while it walks it.
            await asyncio.to_thread(self._check)

    def _check(self) -> None:
        excess = rss_bytes() - self.held()
        if self._floor is None:  # the first look: the idle process
            self._floor = excess
            return
        if excess - self._floor < TRIM_STEP:
            return
        if time.monotonic() - self._trimmed_at < TRIM_MIN_SECONDS:
            return
        started = time.perf_counter()
        self._trim(0)
        self.trims += 1
        self._trimmed_at = time.monotonic()
        self._floor = rss_bytes() - self.held()  # what trimming cannot give back
        log.debug("malloc_trim: RSS was %.0f MiB over the frames held, now %.0f (%.1f ms)",
                  excess / MIB, self._floor / MIB, 1000 * (time.perf_counter() - started))


class _Reading:
    __slots__ = ("memory", "size")

    def __init__(self, memory: FrameMemory, size: int):
        self.memory, self.size = memory, size

    def __enter__(self) -> None:
        self.memory.uploads += self.size

    def __exit__(self, *exc) -> None:
        self.memory.uploads -= self.size
