"""The recorder: follows every stream and writes it to disk from a small thread pool.

On the event loop, :meth:`Recorder.frame_published` only appends the frame to the
stream's bounded queue (dropping and counting the oldest when full), drops the
oldest frames queued by any stream while all queues together hold more than
``recording.max_queue_mb`` of JPEG bytes, and, if the stream is not already waiting
for a writer, puts it on the ready list; it wakes no thread. The writer threads wake
every ``TICK`` and serve the streams that were ready, writing what each has queued
as one batch, so 500 streams do not need 500 threads and writers wake ≈66 times a
second instead of once per frame. For passthrough, one writer serves every tick and
a second joins only while the first has spent more than a tick on a batch; the
transcoding codecs use 2-4 writers that all take work. While a write is slow, the
streams behind it wait and their queues absorb it (``queue_frames`` per stream,
``max_queue_mb`` in all). A disk error stops that stream's recording, is logged and
shown by ``/health``, and is retried with back-off; live viewing never notices. A
write that does not return (a stalled disk) and frames dropped from full queues show
in ``/health`` too (:meth:`Recorder.problems`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from ..aio import cancel_and_wait
from ..config import RecordingSettings
from ..memory import FrameMemory
from ..streams import Frame, Stream
from .recovery import recover, remove_file, repair, sidecar_temp
from .segment import MAX_FRAGMENT_FRAMES, Segment, open_segment
from .store import RecordingFile, RecordingStore

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
# Writers write in batches this often. A per-frame wake-up cost the event loop more
# than the muxing itself (see docs/recording.md); a frame waits at most this long
# in memory, which is all that kill -9 can lose beyond the last frame's fragment.
TICK = 0.015
# Recorder._arrivals is rebuilt without its forgotten entries once it is this long
# (and afterwards at twice what the rebuild kept).
_COMPACT_MIN = 4096


def _default_writers(codec: str) -> int:
    """Writer threads for ``codec``. Passthrough is mostly the kernel copying a frame
    into the page cache: one thread does it, and a second one helps only while the
    first is behind (see ``Recorder._writer``). Transcoding needs cores: every thread
    takes work."""
    return 2 if codec == "mjpeg" else min(4, max(2, os.cpu_count() or 2))


class _Track:
    """One stream's recording state. The queue is shared with the event loop under
    ``lock``; the segment belongs to whichever writer thread holds the track.

    Frames leave ``pending`` only from the left, so it always holds the frames
    numbered ``dequeued`` to ``enqueued - 1`` in the order they were queued."""

    def __init__(self, name: str, queue_frames: int, fps: float):
        self.name = name
        self.lock = threading.Lock()
        self.pending: deque[Frame] = deque()
        self.pending_bytes = 0  # JPEG bytes in pending
        self.enqueued = 0  # frames ever appended to pending
        self.dequeued = 0  # frames ever taken off pending (to be written, or dropped)
        self.limit = queue_frames
        self.scheduled = False
        self.serving = False  # a writer holds frames of this stream it has not written yet
        # When the frames waiting now began to wait for a write: the last time a write
        # of this stream ended, or when a frame arrived with nothing else waiting.
        self.waiting_since = 0.0
        self.close_reason: str | None = None
        self.segment: Segment | None = None
        self.open_path: Path | None = None  # read from other threads; set by the writer
        self.last_arrival = time.monotonic()
        self.fps = fps
        # The fps cap absorbs a quarter second of bunched-up frames (network jitter).
        self.burst = max(2.0, fps / 4)
        self.tokens = self.burst
        self.last_admit_check = 0.0
        self.frames_written = 0
        self.bytes_written = 0
        self.frames_dropped = 0
        self.drops_settled = 0  # frames_dropped already reported by a closed segment
        self.frames_skipped = 0  # above recording.fps: not recorded, by design
        # Of another size than the open segment's while max_segments_per_minute were
        # opened: not recorded. Writer thread only.
        self.frames_skipped_resolution = 0
        self.opened: deque[float] = deque()  # arrival of each segment's first frame, last 60 s
        self.skip_logged = 0.0  # opened[-1] when skipping was last logged
        self.errors = 0
        self.error: str | None = None
        self.retry_at = 0.0
        self.backoff = 0.0
        # The cluster's recording lease (docs/cluster.md), set on the event loop, read by
        # the writer: the fencing token its segments carry, and the time.monotonic()
        # after which this node may no longer write the stream (inf: no lease needed).
        self.fence: int | None = None
        self.lease_until = math.inf
        self.frames_fenced = 0  # not written: the lease ran out before their write

    def admit(self, mono: float) -> bool:
        """Cap the recorded rate at ``fps`` with a token bucket: on average no faster
        than ``fps``, but a frame that arrives early by jitter is still recorded."""
        self.tokens = min(self.burst, self.tokens + (mono - self.last_admit_check) * self.fps)
        self.last_admit_check = mono
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def stats(self) -> dict:
        """The contract's per-stream numbers."""
        return {
            "bytes_written": self.bytes_written,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "frames_skipped_fps": self.frames_skipped,
            "frames_skipped_resolution": self.frames_skipped_resolution,
            "errors": self.errors,
            "error": self.error,
            "queue_frames": len(self.pending),
            "queue_bytes": self.pending_bytes,
            "segment": str(self.open_path) if self.open_path else None,
            "fence": self.fence,
            "frames_fenced": self.frames_fenced,
        }


class Recorder:
    """Runtime service and :class:`~robogpt_video.streams.StreamListener` that records.

    ``writing`` is set from the start: while it is cleared, writer threads take no
    frames, so frames stay queued as they do behind a frozen disk (tests use it to
    fill the queues deterministically). :meth:`stop` sets it again.
    """

    def __init__(
        self,
        settings: RecordingSettings,
        writer_threads: int | None = None,
        memory: FrameMemory | None = None,
    ):
        self.settings = settings
        #: Cap on :attr:`queue_bytes` (``recording.max_queue_mb``).
        self.max_queue_bytes = int(settings.max_queue_mb * 1024 * 1024)
        #: The frame budget (``server.max_frame_memory_mb``) queued frames yield to.
        self.memory = memory
        self.writing = threading.Event()
        self.writing.set()
        self.store = RecordingStore(settings.directory)
        self.writer_threads = writer_threads or _default_writers(settings.codec)
        self._tracks: dict[str, _Track] = {}
        self._retired: set[_Track] = set()  # closed streams whose segment is still closing
        self._ready: deque[_Track] = deque()  # tracks with work, each at most once
        # JPEG bytes in every track's pending = _bytes_in - sum(_bytes_out), with no lock
        # of their own: each number has one thread that changes it (the event loop adds
        # and drops, writer i takes), always under the lock of the track concerned.
        self._bytes_in = 0
        self._bytes_out = [0] * self.writer_threads
        self._bytes_out_seen = 0  # sum(_bytes_out) when the event loop last added it up
        # Bytes each writer has finished with (its batch written): _bytes_out - _bytes_done
        # is what writers hold; only writer i changes _bytes_done[i].
        self._bytes_done = [0] * self.writer_threads
        # (track, frame number) of queued frames in arrival order, for dropping the
        # oldest across streams. Event loop only. Entries whose frame has left its
        # queue are forgotten lazily: from the front, and by _compact.
        self._arrivals: deque[tuple[_Track, int]] = deque()
        self._compact_at = _COMPACT_MIN
        # [second of time.monotonic(), frames dropped from the disk queues in it], oldest
        # first, reaching back recording.health_window_seconds: for the queues' own caps,
        # and for the frame budget. Event loop only.
        self._queue_drops: deque[list[int]] = deque()
        self._memory_drops: deque[list[int]] = deque()
        self._exit = False  # writer threads return at their next tick
        self._threads: list[threading.Thread] = []
        self._paused: str | None = None
        self._running = False
        self._created: set[Path] = set()  # files this process made: recovery skips them
        self._ticker: asyncio.Task | None = None
        self._recovery: threading.Thread | None = None
        self._started_at = 0.0  # wall clock: leftovers are older than this
        # Sidecars the disk refused (full): video path -> what to write. Writer 0 tries
        # again after a back-off, and at once after a new segment's sidecar was written.
        self._unwritten: dict[Path, dict] = {}
        self._unwritten_lock = threading.Lock()
        self._unwritten_at = 0.0  # monotonic time of the next try
        self._unwritten_backoff = 0.0
        # Passthrough: writer 0 serves every tick; the others only while it is behind.
        # Two writers sharing light work cost ≈15 % more server CPU at 50 × 30 fps
        # (GIL hand-offs); with PyAV's muxer one alone fell behind at 300 × 30 fps and
        # recorded a third of the frames, while two recorded 88 % (docs/recording.md).
        self._helpers_wait = settings.codec == "mjpeg"
        self._lead_busy_since = 0.0  # when writer 0 started its current batch, or 0

    # -- service ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer threads, the idle ticker and (in a thread) crash recovery."""
        self._running = True
        self._started_at = time.time()
        for i in range(self.writer_threads):
            thread = threading.Thread(
                target=self._writer, args=(i,), name=f"recorder-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._recovery = threading.Thread(target=self._recover, name="recovery", daemon=True)
        self._recovery.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="recorder-ticker")

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every open segment (sidecar ``complete``) and stop the threads."""
        if not self._running:
            return
        self._running = False
        self.writing.set()  # whatever is queued gets written
        await cancel_and_wait(self._ticker)
        for track in list(self._tracks.values()):
            self._request_close(track, "server shutdown")
        deadline = time.monotonic() + timeout
        while any(t.scheduled for t in self._all()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._exit = True
        await asyncio.to_thread(self._join, deadline)
        # A last try (not behind a writer still stuck in a write: it would hang too);
        # what is still refused says "recording", and start-up recovery describes it.
        if self._unwritten and not any(thread.is_alive() for thread in self._threads):
            await asyncio.to_thread(self._write_unwritten)

    def _join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._recovery is not None:
            self._recovery.join(max(0.0, deadline - time.monotonic()))

    # -- listener (event loop; must never block) ----------------------------------------

    def stream_opened(self, stream: Stream) -> None:
        """Nothing to do until the first frame arrives."""

    def frame_published(self, stream: Stream, frame: Frame) -> None:
        """Queue ``frame`` for its stream's writer; drop the oldest queued one if full.

        Then, while all queues together hold more than :attr:`max_queue_bytes`, or
        more than the frame budget leaves them (:attr:`memory`: its budget less the
        latest frames, uploads being read and what the writers hold), the oldest
        queued frames of any stream are dropped (globally oldest first; the new frame
        goes too if it alone is larger than the cap). Every drop is counted in its
        stream's ``frames_dropped``. O(1) per frame on average; it never waits for a
        write, only for locks that are held around a few deque operations.
        """
        if not self._running:
            return
        track = self._tracks.get(stream.name)
        if track is None:
            track = self._track(stream.name)
        track.last_arrival = frame.monotonic
        if self._paused is not None:
            with track.lock:
                track.frames_dropped += 1
            return
        if not track.admit(frame.monotonic):
            track.frames_skipped += 1
            return
        with track.lock:
            added = frame.size
            if not track.pending and not track.serving:
                track.waiting_since = frame.monotonic
            if len(track.pending) >= track.limit:
                added -= track.pending.popleft().size
                track.dequeued += 1
                track.frames_dropped += 1
                self._count_drop(self._queue_drops, frame.monotonic)
            track.pending.append(frame)
            number = track.enqueued
            track.enqueued = number + 1
            track.pending_bytes += added
            self._bytes_in += added
            self._schedule(track)
        arrivals = self._arrivals
        arrivals.append((track, number))
        # Forget the oldest entries whose frame a writer took (or a drop removed). An
        # unlocked read of ``dequeued`` can only be behind: an entry may stay a while.
        while arrivals and arrivals[0][1] < arrivals[0][0].dequeued:
            arrivals.popleft()
        cap, drops = self.max_queue_bytes, self._queue_drops
        memory = self.memory
        if memory is not None:
            # What the budget leaves for queued frames once everything else is counted
            # (a stream's latest frame may be queued too: counted twice, never missed).
            done = sum(self._bytes_done)  # first: a writer finishing later only adds
            self._bytes_out_seen = sum(self._bytes_out)
            room = memory.budget - memory.unqueued - (self._bytes_out_seen - done)
            if room < cap:
                cap, drops = room, self._memory_drops
        # _bytes_out only grows, so the sum last seen gives an upper bound without
        # adding up the writers' numbers for every frame.
        if self._bytes_in - self._bytes_out_seen > cap:
            self._bytes_out_seen = sum(self._bytes_out)
            if self._bytes_in - self._bytes_out_seen > cap:
                self._drop_oldest(cap, drops)
        elif len(arrivals) > self._compact_at:
            self._compact()

    def _drop_oldest(self, cap: int, drops: deque[list[int]]) -> None:
        """Drop the globally oldest queued frames until the queues fit under ``cap``
        (counted in ``drops`` as well as in each stream's ``frames_dropped``)."""
        arrivals = self._arrivals
        while arrivals:
            track, number = arrivals[0]
            with track.lock:
                # A frame still queued is at the front of its stream's queue: an older
                # one of the same stream came first in arrivals.
                if number == track.dequeued:
                    self._bytes_out_seen = sum(self._bytes_out)  # a writer may have taken some
                    if self._bytes_in - self._bytes_out_seen <= cap:
                        return
                    size = track.pending.popleft().size
                    self._bytes_in -= size
                    track.pending_bytes -= size
                    track.dequeued += 1
                    track.frames_dropped += 1
                    self._count_drop(drops, time.monotonic())
            arrivals.popleft()

    def _count_drop(self, drops: deque[list[int]], mono: float) -> None:
        # Event loop only: one [second, drops] entry per second with drops, for /health.
        second = int(mono)
        if drops and drops[-1][0] == second:
            drops[-1][1] += 1
            return
        drops.append([second, 1])
        while drops[0][0] < second - self.settings.health_window_seconds:
            drops.popleft()

    def _compact(self) -> None:
        # An entry of a frame still queued keeps every later entry in arrivals, even
        # those whose frames were written long ago (one stream's writer stuck on its
        # file while the others go on). Rebuilding at twice the kept length costs O(1)
        # per frame on average and keeps arrivals within twice the queued frames.
        self._arrivals = deque(e for e in self._arrivals if e[1] >= e[0].dequeued)
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._arrivals))

    def stream_closed(self, stream: Stream, reason: str) -> None:
        """Close the stream's segment after its queued frames are written."""
        if not self._running:  # stop() has closed every segment already
            return
        track = self._tracks.pop(stream.name, None)
        if track is not None:
            self._retired.add(track)
            self._request_close(track, reason)

    def _schedule(self, track: _Track) -> None:
        # Caller holds track.lock. A track is on the ready list at most once, so one
        # thread at a time owns its segment and frames stay in order.
        if not track.scheduled:
            track.scheduled = True
            self._ready.append(track)

    def _request_close(self, track: _Track, reason: str) -> None:
        with track.lock:
            track.close_reason = reason
            self._schedule(track)

    # -- control ------------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        """Stop recording (open segments close cleanly); new frames count as dropped."""
        if self._paused is None:
            log.warning("recording paused: %s", reason)
        self._paused = reason
        for track in list(self._tracks.values()):
            self._request_close(track, "paused")

    def resume(self) -> None:
        """Record again after :meth:`pause`."""
        if self._paused is not None:
            log.info("recording resumed")
        self._paused = None

    def set_lease(self, name: str, fence: int | None, until: float) -> None:
        """The cluster's lease for ``name`` (event loop): segments opened from now on carry
        ``fence``; an open segment of another fence is closed before the next frame is
        written; nothing is written at or after ``until`` (``time.monotonic()``)."""
        track = self._track(name)
        track.fence, track.lease_until = fence, until

    def revoke(self, name: str, reason: str) -> None:
        """This node no longer records ``name``: close its segment (a normal close while
        the lease lasts; after it, what is on disk stays and nothing more is written)."""
        track = self._tracks.get(name)
        if track is not None:
            self._request_close(track, reason)

    def _track(self, name: str) -> _Track:
        track = self._tracks.get(name)
        if track is None:
            track = self._tracks[name] = _Track(
                name, self.settings.queue_frames, self.settings.fps
            )
        return track

    def open_paths(self) -> set[Path]:
        """Video files being written right now (cleanup must not delete them)."""
        return {t.open_path for t in self._all() if t.open_path is not None}

    def stats(self) -> dict[str, dict]:
        """Per-stream recording numbers."""
        return {name: track.stats() for name, track in list(self._tracks.items())}

    @property
    def held_bytes(self) -> int:
        """JPEG bytes queued for the disk or taken by a writer and not written yet (the
        recorder's part of the frame budget). Like :attr:`queue_bytes`, it may lag a
        writer read from another thread."""
        done = sum(self._bytes_done)
        return self._bytes_in - done

    @property
    def queue_bytes(self) -> int:
        """JPEG bytes queued for the disk by all streams (closed ones still draining
        too). At most :attr:`max_queue_bytes` except while :meth:`frame_published`
        runs; frames a writer has taken off a queue are no longer counted. Read from
        another thread it may lag behind a writer's take, never behind a frame queued."""
        out = sum(self._bytes_out)  # first: a take counted after this only makes it high
        return self._bytes_in - out

    def stream_stats(self, name: str) -> dict | None:
        """One stream's recording numbers, or ``None`` if it has not recorded."""
        track = self._tracks.get(name)
        return track.stats() if track is not None else None

    def problems(self) -> list[str]:
        """Why recording is not working right now (``/health`` shows these).

        Besides a pause and failing streams: streams whose frames have waited
        ``recording.stall_seconds`` or more for a write to end (a stalled or too slow
        disk), and frames dropped from the disk queues (full) within the last
        ``recording.health_window_seconds``.
        """
        found = [f"recording paused: {self._paused}"] if self._paused else []
        for track in list(self._tracks.values()):
            if track.error:
                found.append(f"recording of stream '{track.name}' failed: {track.error}")
        now = time.monotonic()
        waits = [
            now - track.waiting_since
            for track in self._all()
            if track.pending or track.serving
        ]
        stalled = [wait for wait in waits if wait >= self.settings.stall_seconds]
        if stalled:
            found.append(
                f"recording: no write completed for {max(stalled):.0f} s on "
                f"{len(stalled)} stream(s) (the disk is stalled or too slow)"
            )
        window = self.settings.health_window_seconds
        dropped = sum(n for second, n in list(self._queue_drops) if second >= now - window)
        if dropped:
            found.append(
                f"recording: {dropped} frame(s) dropped from the disk queue in the last {window:g} s"
            )
        dropped = sum(n for second, n in list(self._memory_drops) if second >= now - window)
        if dropped and self.memory is not None:
            found.append(
                f"recording: {dropped} frame(s) dropped from the disk queue in the last "
                f"{window:g} s to keep the frames held within server.max_frame_memory_mb "
                f"({self.memory.budget / 1024 / 1024:g} MiB)"
            )
        return found

    async def _tick_forever(self) -> None:
        # Close the segment of a stream that stopped sending, so its file is complete
        # and nothing stays open for an idle camera.
        idle = self.settings.idle_close_seconds
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            now = time.monotonic()
            for track in list(self._tracks.values()):
                if track.open_path is not None and now - track.last_arrival >= idle:
                    self._request_close(track, "idle")

    # -- writer threads -----------------------------------------------------------------

    def _writer(self, index: int) -> None:
        lead = index == 0 or not self._helpers_wait
        while not self._exit:
            time.sleep(TICK)
            if not self.writing.is_set():
                continue
            if lead:
                self._lead_busy_since = time.monotonic()
                try:
                    self._write_ready(index)
                finally:
                    self._lead_busy_since = 0.0
            elif self._lead_behind():
                self._write_ready(index)
            if index == 0 and self._unwritten and time.monotonic() >= self._unwritten_at:
                self._write_unwritten()

    def _lead_behind(self) -> bool:
        """Writer 0 has spent more than a tick on its current batch."""
        started = self._lead_busy_since
        return started > 0 and time.monotonic() - started > TICK

    def _write_ready(self, writer: int) -> None:
        # Only the tracks ready now: one that refills meanwhile waits for the next
        # tick, so each wake-up writes a batch.
        for _ in range(len(self._ready)):
            try:
                track = self._ready.popleft()
            except IndexError:  # another writer took the rest
                break
            try:
                self._serve(track, writer)
            except Exception:  # never lose a writer thread; the track is retried later
                log.exception("recorder failed on stream %s", track.name)

    def _serve(self, track: _Track, writer: int) -> None:
        with track.lock:
            frames = list(track.pending)
            track.pending.clear()
            track.dequeued += len(frames)
            taken = track.pending_bytes
            self._bytes_out[writer] += taken
            track.pending_bytes = 0
            reason, track.close_reason = track.close_reason, None
            track.serving = True
        try:
            for frame in frames:
                self._write(track, frame)
                if track.segment is not None and track.segment.unflushed >= MAX_FRAGMENT_FRAMES:
                    self._flush(track)
                track.waiting_since = time.monotonic()
            self._flush(track)  # one fragment per stream per batch
            track.waiting_since = time.monotonic()
            if reason is not None and track.segment is not None:
                self._close(track, "complete", reason)
        finally:
            self._bytes_done[writer] += taken
            with track.lock:
                track.serving = False
                track.scheduled = False
                if track.pending or track.close_reason is not None:
                    self._schedule(track)
                elif track.segment is None:
                    self._retired.discard(track)

    @staticmethod
    def _fenced(track: _Track) -> bool:
        """The lease has run out (or is about to: the cluster sets ``lease_until`` a
        safety margin before the key can expire for other nodes)."""
        return time.monotonic() >= track.lease_until

    def _fence(self, track: _Track) -> None:
        """The lease ran out with a segment open: stop writing it at once. The frames it
        kept back are not written; its sidecar describes what the file holds (status
        ``fenced``). Writing the sidecar touches only the ``.json``."""
        segment, track.segment = track.segment, None
        if segment is None:
            return
        kept_back = segment.unflushed
        segment.abort()
        track.frames_written -= kept_back
        track.frames_fenced += kept_back
        self._settle_drops(track, segment)
        start = datetime.fromtimestamp(segment.start_ts, timezone.utc)
        meta = segment.sidecar("fenced")
        try:
            meta = repair(self.store, RecordingFile(segment.stream, segment.path, start), meta)
            meta["status"] = "fenced"
            if segment.fence is not None:
                meta["fence"] = segment.fence
            self._write_sidecar(segment.path, meta)
        except Exception as exc:
            log.warning("cannot describe fenced recording %s: %s", segment.path, exc)
        finally:
            track.open_path = None
        log.warning("recording %s fenced: the lease of stream %s ran out", segment.path.name,
                    track.name)

    def _write(self, track: _Track, frame: Frame) -> None:
        if track.error is not None and frame.monotonic < track.retry_at:
            with track.lock:
                track.frames_dropped += 1
            return
        if self._fenced(track):
            self._fence(track)
            track.frames_fenced += 1
            return
        segment = track.segment
        if segment is not None and segment.fence != track.fence:
            self._close(track, "complete", "new lease")
            segment = track.segment
        if segment is not None and not segment.fits(frame, self.settings.segment_seconds):
            if self._over_budget(track, segment, frame):
                track.frames_skipped_resolution += 1
                return
            self._close(track, "complete", "rotation")
            segment = None
        try:
            before = 0
            if segment is None:
                segment = self._open(track, frame)  # writes the first frame
            else:
                before = segment.bytes_written
                segment.write(frame)
            track.bytes_written += segment.bytes_written - before
            track.frames_written += 1
        except Exception as exc:
            self._fail(track, exc, frame)
            return
        if track.error is not None:
            log.info("recording of stream %s works again", track.name)
            track.error, track.backoff = None, 0.0

    def _over_budget(self, track: _Track, segment: Segment, frame: Frame) -> bool:
        """``frame`` has another size than ``segment`` and the stream has opened
        ``max_segments_per_minute`` segments in the 60 s before it (two cameras under
        one name would otherwise make a file per frame). A segment past its
        ``segment_seconds`` is replaced anyway: that rotation is the operator's."""
        if frame.monotonic - segment.start_mono >= self.settings.segment_seconds:
            return False
        opened = track.opened
        while opened and opened[0] <= frame.monotonic - 60.0:
            opened.popleft()
        if len(opened) < self.settings.max_segments_per_minute:
            return False
        if opened[-1] > track.skip_logged:  # once per run of skipped frames
            track.skip_logged = opened[-1]
            log.warning(
                "stream %s changes resolution too often (%d segments in a minute, "
                "recording.max_segments_per_minute): frames of another size than %dx%d "
                "are not recorded for now", track.name, len(opened), segment.width,
                segment.height,
            )
        return True

    def _flush(self, track: _Track) -> bool:
        """Put the segment's kept-back frames on disk; ``False`` if that failed."""
        segment = track.segment
        if segment is None or not segment.unflushed:
            return True
        if self._fenced(track):  # the cluster's lease ran out: write nothing more
            self._fence(track)
            return False
        try:
            segment.flush()
        except Exception as exc:
            self._fail(track, exc)
            return False
        return True

    def _open(self, track: _Track, frame: Frame) -> Segment:
        start = datetime.fromtimestamp(frame.timestamp, timezone.utc)
        path = self.store.new_segment_path(track.name, start)
        self._created.add(path)
        # Open before the file exists: cleanup and DELETE leave it alone from the start.
        track.open_path = path
        try:
            segment = open_segment(path, track.name, frame, self.settings.codec, self.settings.fps)
            segment.fence = track.fence
        except BaseException:
            remove_file(path)  # created, but its header could not be written (disk full)
            track.open_path = None
            raise
        try:
            segment.write(frame)  # so the first sidecar describes a file that holds a frame
            segment.flush()
            self._write_sidecar(path, segment.sidecar("recording"))
        except BaseException:
            segment.abort()
            self._torn(segment)
            track.open_path = None
            raise
        track.segment = segment
        track.opened.append(frame.monotonic)
        self._unwritten_at = 0.0  # the disk takes sidecars: try the refused ones now
        log.info("recording %s to %s", track.name, path)
        return segment

    def _close(self, track: _Track, status: str, reason: str) -> None:
        if not self._flush(track):
            return  # _fail has closed it and described what the file holds
        # open_path stays set until the sidecar says how the file ended: until then the
        # file is still being written, and cleanup and DELETE must leave it alone.
        segment = track.segment
        self._settle_drops(track, segment)
        try:
            segment.close()
        except Exception as exc:  # the last fragment or the trailer: the file is torn
            self._fail(track, exc)
            return
        track.segment = None
        try:
            self._write_sidecar(segment.path, segment.sidecar(status))
        except Exception as exc:
            log.error("closing recording %s: cannot write its sidecar: %s", segment.path, exc)
            track.errors += 1
            self._write_later(segment.path, segment.sidecar(status))
            return
        finally:
            track.open_path = None
        log.info(
            "recording %s closed (%s): %d frames, %.1f s",
            segment.path.name, reason, segment.frames, segment.age,
        )

    def _fail(self, track: _Track, exc: Exception, frame: Frame | None = None) -> None:
        # ``frame``: the frame being written when it failed (not counted as written yet).
        segment, track.segment = track.segment, None
        lost = 1 if frame is not None else 0
        if segment is not None:
            kept_back = segment.unflushed  # counted as written, never reached the file
            before = segment.bytes_written
            segment.abort()
            track.frames_written -= kept_back
            track.bytes_written -= before - segment.bytes_written
            lost += kept_back
            self._settle_drops(track, segment)
            self._torn(segment)
        track.open_path = None  # after the sidecar describes what the file holds
        track.errors += 1
        with track.lock:
            track.frames_dropped += lost
        track.backoff = min(MAX_BACKOFF, max(1.0, track.backoff * 2))
        failed_at = frame.monotonic if frame is not None else time.monotonic()
        track.retry_at = failed_at + track.backoff
        track.error = f"{exc} (retrying in {track.backoff:.0f} s)"
        log.error("recording of stream %s failed: %s", track.name, track.error)

    def _torn(self, segment: Segment) -> None:
        """After a failed write: remove a file that holds no frame (and its sidecar), or
        describe what the file really holds (status ``torn``), as recovery would. If the
        disk refuses the sidecar, it is written once the disk takes writes again."""
        if segment.frames == 0:  # after abort(): frames in complete fragments only
            remove_file(segment.path)
            remove_file(segment.path.with_suffix(".json"))
            log.info("removed %s: the disk failed before it held a frame", segment.path)
            return
        start = datetime.fromtimestamp(segment.start_ts, timezone.utc)
        recording = RecordingFile(segment.stream, segment.path, start)
        try:
            meta = repair(self.store, recording, segment.sidecar("recording"))
        except Exception as exc:  # gone (deleted), a link, or unreadable: nothing to describe
            log.warning("cannot describe %s after the error: %s", segment.path, exc)
            return
        meta["status"] = "torn"
        try:
            self._write_sidecar(segment.path, meta)
        except Exception as exc:
            log.warning("cannot describe %s after the error yet: %s", segment.path, exc)
            self._write_later(segment.path, meta)

    def _write_sidecar(self, video: Path, meta: dict) -> None:
        """Write a sidecar; a failed write leaves no temp file behind."""
        try:
            self.store.write_sidecar(video, meta)
        except BaseException:
            remove_file(sidecar_temp(video))
            raise

    def _write_later(self, video: Path, meta: dict) -> None:
        with self._unwritten_lock:
            self._unwritten[video] = meta
            if self._unwritten_backoff == 0.0:
                self._unwritten_backoff = 1.0
                self._unwritten_at = time.monotonic() + 1.0

    def _write_unwritten(self) -> None:
        """Write the sidecars the disk refused; after a refusal, wait longer (up to 30 s)."""
        with self._unwritten_lock:
            waiting = list(self._unwritten.items())
        for video, meta in waiting:
            try:
                if video.exists():  # not deleted meanwhile (no sidecar without its video)
                    self._write_sidecar(video, meta)
            except Exception as exc:
                with self._unwritten_lock:
                    self._unwritten_backoff = min(
                        MAX_BACKOFF, max(1.0, self._unwritten_backoff * 2)
                    )
                    self._unwritten_at = time.monotonic() + self._unwritten_backoff
                log.debug("sidecar of %s still refused: %s", video, exc)
                return
            with self._unwritten_lock:
                if self._unwritten.get(video) is meta:
                    del self._unwritten[video]
            log.info("sidecar of %s written after the disk refused it (%s)", video, meta["status"])
        with self._unwritten_lock:
            if not self._unwritten:
                self._unwritten_backoff = 0.0

    @staticmethod
    def _settle_drops(track: _Track, segment: Segment) -> None:
        # A segment reports the frames the stream lost since the previous one closed.
        with track.lock:
            segment.frames_dropped += track.frames_dropped - track.drops_settled
            track.drops_settled = track.frames_dropped

    def _all(self) -> list[_Track]:
        return [*self._tracks.values(), *self._retired]

    def _recover(self) -> None:
        try:
            recover(self.store, lambda path: path in self._created, before=self._started_at)
        except Exception:  # recovery is best effort; serving and recording go on
            log.exception("recovery of recordings in %s failed", self.store.root)
