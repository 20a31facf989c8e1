"""Live streams: the latest frame, recent-frame records, viewers and fan-out.

This module knows frames, viewers and where a viewer's frames go (a
:class:`FrameSink`); it knows nothing of HTTP. ``publish`` hands each new frame to
every idle viewer's sink itself; a viewer whose sink is full is handed back to its
own task, which waits until the sink drains and then sends the newest frame. So a
slow viewer skips frames and never holds up the publisher or another viewer.
Everything here runs on the event loop and never blocks: listeners (the recorder)
get each frame through :class:`StreamListener` and must hand it off without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple, Protocol

from .aio import cancel_and_wait
from .config import StreamsSettings
from .errors import ApiError, InvalidStreamName, StreamLimitReached, ViewerLimitReached
from .jpeg import JpegInfo

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TICK = object()  # wake-up value: nothing new was published, re-send the last frame
_CLOSED = object()  # wake-up value: the stream or the viewer has ended
_LAGGING = object()  # wake-up value: a frame was not handed over (full sink); catch up
#: What a stream counts of its viewers; a variant's viewers count towards its stream.
VIEWER_COUNTERS = (
    "frames_out", "bytes_out", "frames_pushed", "frames_dropped_slow_viewers",
    "frames_skipped_fps",
)


def validate_stream_name(name: str) -> str:
    """Return ``name`` if it is a legal stream name, else raise :class:`InvalidStreamName`."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}…"
        raise InvalidStreamName(
            f"stream name {shown!r} is invalid: use 1-64 letters, digits, '_' or '-'"
        )
    return name


def iso(ts: float | None) -> str | None:
    """A wall-clock timestamp as ISO-8601 UTC with a trailing ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@dataclass(slots=True, eq=False)
class Frame:
    """One accepted JPEG, as received (a view into a multipart body is not copied)."""

    seq: int
    timestamp: float  # wall clock at arrival (epoch seconds)
    monotonic: float  # monotonic clock at arrival
    width: int
    height: int
    size: int
    jpeg: bytes | memoryview


class FrameRecord(NamedTuple):
    """What the stream remembers of a recent frame (the image itself is not kept)."""

    seq: int
    timestamp: float
    size: int
    width: int
    height: int


class FrameSink(Protocol):
    """Where one viewer's frames go (an HTTP response, a WebSocket): the web layer's."""

    @property
    def paused(self) -> bool:
        """The link is full: wait with :meth:`drain` before handing over the next frame."""

    async def drain(self) -> None:
        """Return once the link takes frames again (or the client has gone)."""

    def write_frame(self, frame: Frame) -> bool:
        """Hand ``frame`` over without blocking; ``False`` once the client has gone."""


class StreamListener(Protocol):
    """Something that follows every stream (the recorder). Must not block."""

    def stream_opened(self, stream: Stream) -> None: ...

    def frame_published(self, stream: Stream, frame: Frame) -> None: ...

    def stream_closed(self, stream: Stream, reason: str) -> None: ...


@dataclass(slots=True, eq=False)
class Viewer:
    """One viewer of a stream and the sink its frames go to."""

    sink: FrameSink
    last_seq: int = 0  # the last frame handed to its sink (0: none yet)
    counted_from: int = 0  # frames after this one count as dropped if it never gets them
    closed: bool = False
    sending_since: float = 0.0  # monotonic time it began waiting for a full sink; 0 if not
    interval: float = 0.0  # its fps cap's step (1/fps), 0.0: no cap
    due: float = 0.0  # with a cap: the monotonic time its next frame is due
    task: asyncio.Task | None = None
    waiter: asyncio.Future | None = None

    def close(self) -> None:
        """End this viewer at its next wake-up."""
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(_CLOSED)


class Stream:
    """A named live stream: latest frame, recent-frame records, viewers, counters."""

    def __init__(
        self,
        name: str,
        settings: StreamsSettings,
        listeners: list[StreamListener],
        clock: Callable[[], float] = time.time,
    ):
        self.name = name
        self.settings = settings
        self.created_at = clock()
        # The brief's per-stream frame buffer: a record of each of the last
        # max_buffer_frames frames (arrival time, size, resolution), served by
        # GET /api/streams/<name>/frames. Images are not kept: the latest frame is all
        # viewers ever get, and the recorder holds its own queue (docs/bench.md).
        self.recent: deque[FrameRecord] = deque(maxlen=settings.max_buffer_frames)
        self.viewers: set[Viewer] = set()
        self.latest: Frame | None = None
        self.total_frames = 0
        self.bytes_in = 0
        self.frames_out = 0  # frames handed to viewers' sinks
        self.bytes_out = 0  # bytes the sinks wrote for them (each sink adds its own)
        self.frames_pushed = 0  # of those, by publish itself to an idle viewer
        self.frames_dropped_slow_viewers = 0  # frames viewers never got (a full link)
        self.frames_skipped_fps = 0  # frames viewers' ?fps= caps skipped
        #: Resized versions of this stream, by (width, quality), while someone watches
        #: them (variants.py); publish feeds them each frame.
        self.variants: dict = {}
        self.variant_frames_encoded = 0  # frames its variants resized and re-encoded
        self.variant_encode_seconds = 0.0  # worker-thread CPU seconds those took
        self.variant_frames_skipped_busy = 0  # frames a variant skipped: its encoder was busy
        self.closed = False
        self.last_wake = time.monotonic()
        self._clock = clock
        self._listeners = listeners
        self._parked: dict[Viewer, FrameSink] = {}  # idle viewers publish hands frames to
        self._arrivals: deque[float] = deque(maxlen=256)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, jpeg: bytes | memoryview, info: JpegInfo) -> Frame:
        """Accept one validated JPEG: hand it to idle viewers, tell listeners."""
        now = self._clock()
        mono = time.monotonic()
        self.total_frames += 1
        size = len(jpeg)
        frame = Frame(self.total_frames, now, mono, info.width, info.height, size, jpeg)
        self._take(frame)
        for listener in self._listeners:
            try:
                listener.frame_published(self, frame)
            except Exception:  # a broken listener must never cost a frame
                log.exception("listener %r failed on stream %s", listener, self.name)
        return frame

    def relay(self, timestamp: float, width: int, height: int, jpeg: bytes | memoryview) -> Frame:
        """Accept a frame of this stream published on another node (cluster.py).

        It keeps its node's timestamp and is numbered in this stream's own sequence (a
        stream may be published to on several nodes, each numbering its own frames);
        listeners are not told (a frame is recorded by the node it was published to).
        """
        mono = time.monotonic()
        self.total_frames += 1
        seq = self.total_frames
        size = len(jpeg)
        frame = Frame(seq, timestamp, mono, width, height, size, jpeg)
        self._take(frame)
        return frame

    def _take(self, frame: Frame) -> None:
        """Make ``frame`` the latest and hand it to idle viewers and resized variants."""
        self.latest = frame
        self.recent.append(FrameRecord(frame.seq, frame.timestamp, frame.size, frame.width,
                                       frame.height))
        self.bytes_in += frame.size
        self._arrivals.append(frame.monotonic)
        self.last_wake = frame.monotonic
        if self._parked:
            self._push(frame)
        if self.variants:
            self._feed_variants(frame)

    def _feed_variants(self, frame: Frame) -> None:
        for variant in list(self.variants.values()):
            try:
                variant.feed(frame)
            except Exception:  # a failing variant must never cost the stream a frame
                log.exception("variant %r of stream %s failed", variant, self.name)

    def _push(self, frame: Frame) -> None:
        # Hand the frame to every idle viewer from here: no task wakes up per viewer per
        # frame. One whose sink is full, or gone, is handed back to its own task, which
        # also meets any error of its own: the publisher never sees it.
        lagging = []
        for viewer, sink in self._parked.items():
            if viewer.interval and not viewer.closed and not sink.paused:
                if self._skip(viewer, frame):
                    continue  # stays parked
            try:
                sent = not viewer.closed and not sink.paused and self._send(viewer, frame)
            except Exception:
                log.debug("handing a frame of %s to a viewer failed", self.name, exc_info=True)
                sent = False
            if sent:
                self.frames_pushed += 1
            else:
                lagging.append(viewer)
        for viewer in lagging:
            self._unpark(viewer, _LAGGING)

    def _send(self, viewer: Viewer, frame: Frame) -> bool:
        if not viewer.sink.write_frame(frame):
            return False
        previous = viewer.last_seq or viewer.counted_from
        if frame.seq > previous + 1:
            self.frames_dropped_slow_viewers += frame.seq - previous - 1
        viewer.last_seq = frame.seq  # never lower: a re-send is the same frame
        self.frames_out += 1
        return True

    def _skip(self, viewer: Viewer, frame: Frame) -> bool:
        """Whether ``viewer``'s fps cap skips ``frame`` (counted in ``frames_skipped_fps``).

        The frames it takes are due on a grid of 1/fps steps, so arrival jitter does not
        make it wait a whole extra source frame: a frame up to a quarter step early is
        taken, and the next is due a step after the last due time (or half a step after
        the frame, when the viewer fell behind the grid).
        """
        step = viewer.interval
        arrived = frame.monotonic
        if arrived < viewer.due - step / 4:
            self.frames_skipped_fps += 1
            viewer.last_seq = max(viewer.last_seq, frame.seq)  # not owed: not "dropped"
            return True
        viewer.due = max(viewer.due + step, arrived + step / 2)
        return False

    def _unpark(self, viewer: Viewer, value: object) -> None:
        del self._parked[viewer]
        if viewer.waiter is not None and not viewer.waiter.done():
            viewer.waiter.set_result(value)

    def _wake_all(self, value: object) -> None:
        self.last_wake = time.monotonic()
        for viewer in list(self._parked):
            self._unpark(viewer, value)

    def tick(self, now: float) -> None:
        """Wake viewers of a quiet stream so they re-send the last frame."""
        if self._parked and now - self.last_wake >= self.settings.resend_seconds:
            self._wake_all(_TICK)

    def close(self, reason: str) -> None:
        """End the stream: every viewer ends, listeners are told."""
        if self.closed:
            return
        self.closed = True
        for viewer in list(self.viewers):  # wakes the parked ones too
            viewer.close()
        for variant in list(self.variants.values()):
            variant.close(reason)
        for listener in self._listeners:
            try:
                listener.stream_closed(self, reason)
            except Exception:
                log.exception("listener %r failed closing stream %s", listener, self.name)

    # -- viewing ------------------------------------------------------------------------

    def check_viewer_room(self) -> None:
        """Raise :class:`ViewerLimitReached` if the stream has ``max_viewers`` already."""
        count = self.viewer_count()
        if count >= self.settings.max_viewers:
            raise ViewerLimitReached(
                f"stream '{self.name}' already has {count} viewers (max_viewers)"
            )

    def count(self, counter: str) -> float:
        """One of its counters; those of ``VIEWER_COUNTERS`` with its variants' viewers."""
        value = getattr(self, counter)
        if counter in VIEWER_COUNTERS:
            for variant in self.variants.values():
                value += getattr(variant.stream, counter)
        return value

    def viewer_count(self) -> int:
        """Its viewers, those of its resized variants included."""
        count = len(self.viewers)
        for variant in self.variants.values():
            count += len(variant.stream.viewers)
        return count

    def add_viewer(self, sink: FrameSink, fps: float | None = None) -> Viewer:
        """Register a viewer whose frames go to ``sink`` (at most ``fps`` a second when
        given), or raise :class:`ViewerLimitReached`."""
        self.check_viewer_room()
        # Frames published after it came count as dropped if it never gets them.
        viewer = Viewer(sink, counted_from=self.latest.seq if self.latest else 0)
        if fps:
            viewer.interval = 1.0 / fps
        self.viewers.add(viewer)
        return viewer

    def remove_viewer(self, viewer: Viewer) -> None:
        """Forget a viewer that has ended, counting the frames it never got."""
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            self._parked.pop(viewer, None)
            if self.latest is not None:
                previous = viewer.last_seq or viewer.counted_from
                self.frames_dropped_slow_viewers += max(0, self.latest.seq - previous)

    async def serve(self, viewer: Viewer) -> bool:
        """Hand ``viewer`` every frame until it ends: the one viewer engine.

        Returns ``True`` when the stream or the viewer ended (the response can finish),
        ``False`` when the client has gone. While the viewer is idle it is *parked*:
        :meth:`publish` hands each new frame to its sink directly, which saves a future,
        a task wake-up and a coroutine switch per viewer per frame. The viewer's own
        task only runs to wait out a full sink (then it sends the newest frame, not the
        one it was holding), to re-send on a quiet stream, and to end.
        """
        loop = asyncio.get_running_loop()
        sink = viewer.sink
        while True:
            if sink.paused:
                viewer.sending_since = time.monotonic()  # the stall detector watches this
                await sink.drain()
                viewer.sending_since = 0.0
            if viewer.closed or self.closed:
                return True
            latest = self.latest
            if latest is not None and latest.seq > viewer.last_seq:
                if viewer.interval and self._skip(viewer, latest):
                    continue
                if not self._send(viewer, latest):
                    return False
                continue
            waiter = viewer.waiter = loop.create_future()
            self._parked[viewer] = sink
            try:
                woke = await waiter
            finally:
                viewer.waiter = None
                self._parked.pop(viewer, None)
            if woke is _TICK and self.latest is not None and not viewer.closed:
                if viewer.interval:  # a re-send keeps to the cap too
                    now = time.monotonic()
                    if now < viewer.due:
                        continue
                    viewer.due = now + viewer.interval
                if not sink.paused and not self._send(viewer, self.latest):
                    return False

    # -- statistics ---------------------------------------------------------------------

    def inactive_seconds(self, now: float | None = None) -> float:
        """Seconds since the last frame (or since creation when none came)."""
        now = self._clock() if now is None else now
        last = self.latest.timestamp if self.latest else self.created_at
        return max(0.0, now - last)

    def fps(self) -> float:
        """Frames per second received over the last two seconds."""
        now = time.monotonic()
        recent = [t for t in self._arrivals if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        if len(recent) == len(self._arrivals) == self._arrivals.maxlen:
            return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)
        return len(recent) / 2.0

    def summary(self) -> dict:
        """The brief's ``/api/streams`` entry (plus extra fields)."""
        now = self._clock()
        latest = self.latest
        return {
            "name": self.name,
            "created_at": iso(self.created_at),
            "uptime_seconds": round(now - self.created_at, 3),
            "total_frames": self.total_frames,
            "viewer_count": self.viewer_count(),
            "inactive_seconds": round(self.inactive_seconds(now), 3),
            "fps": round(self.fps(), 2),
            "width": latest.width if latest else None,
            "height": latest.height if latest else None,
        }

    def stats(self) -> dict:
        """The brief's ``/api/streams/<name>/stats`` body (plus extra fields)."""
        latest = self.latest
        return {
            **self.summary(),
            "last_frame_time": iso(latest.timestamp) if latest else None,
            "buffer_size": len(self.recent),
            "max_buffer_frames": self.recent.maxlen,
            "has_current_frame": latest is not None,
            "bytes_in": self.bytes_in,
            "last_frame_size": latest.size if latest else None,
            "frames_out": self.count("frames_out"),
            "frames_pushed": self.count("frames_pushed"),
            "frames_dropped_slow_viewers": self.count("frames_dropped_slow_viewers"),
            "frames_skipped_fps": self.count("frames_skipped_fps"),
            "variants": len(self.variants),
            "variant_frames_encoded": self.variant_frames_encoded,
            "variant_frames_skipped_busy": self.variant_frames_skipped_busy,
        }

    def recent_frames(self) -> list[dict]:
        """The recorded frames, oldest first, with the gap since the one before."""
        out, previous = [], None
        for record in self.recent:
            gap = None if previous is None else round((record.timestamp - previous) * 1000, 3)
            out.append({
                "sequence": record.seq,
                "time": iso(record.timestamp),
                "timestamp": record.timestamp,
                "size": record.size,
                "width": record.width,
                "height": record.height,
                "interval_ms": gap,
            })
            previous = record.timestamp
        return out


class StreamRegistry:
    """All live streams of the process, with their limit and the resend ticker."""

    def __init__(self, settings: StreamsSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.listeners: list[StreamListener] = []
        self._streams: dict[str, Stream] = {}
        self._clock = clock
        self._ticker: asyncio.Task | None = None
        self.accepting = True  # False once shutdown begins: no new streams
        #: Asked by the inactivity sweep before it removes a stream (the cluster decides
        #: for a stream published to several nodes); ``None``: always.
        self.may_expire: Callable[[str], bool] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self):
        return iter(list(self._streams.values()))

    def get(self, name: str) -> Stream | None:
        """The live stream called ``name``, if any."""
        return self._streams.get(name)

    def get_or_create(self, name: str) -> Stream:
        """The stream called ``name``, created on first use (raises at the limit)."""
        stream = self._streams.get(name)
        if stream is not None:
            return stream
        self.check_room(name)
        stream = Stream(name, self.settings, self.listeners, self._clock)
        self._streams[name] = stream
        log.info("stream %s created (%d live)", name, len(self._streams))
        for listener in self.listeners:
            try:
                listener.stream_opened(stream)
            except Exception:
                log.exception("listener %r failed opening stream %s", listener, name)
        return stream

    def check_room(self, name: str) -> None:
        """Raise what :meth:`get_or_create` would if ``name`` cannot be created now."""
        if name in self._streams:
            return
        validate_stream_name(name)
        if not self.accepting:
            raise ApiError("the server is shutting down", code="shutting_down", status_code=503)
        if len(self._streams) >= self.settings.max_concurrent:
            raise StreamLimitReached(
                f"cannot create stream '{name}': {len(self._streams)} streams are live "
                f"(streams.max_concurrent = {self.settings.max_concurrent})"
            )

    def remove(self, name: str, reason: str) -> Stream | None:
        """Close and forget a stream; returns it, or ``None`` if there was none."""
        stream = self._streams.pop(name, None)
        if stream is not None:
            stream.close(reason)
            log.info("stream %s removed (%s); %d live", name, reason, len(self._streams))
        return stream

    async def start(self) -> None:
        """Start the ticker that re-sends quiet streams and closes stalled viewers."""
        self._ticker = asyncio.create_task(self._tick_forever(), name="stream-ticker")

    def close_all(self, reason: str) -> None:
        """Close every stream: viewer responses end, listeners close their segments."""
        for name in list(self._streams):
            self.remove(name, reason)

    async def end_viewers(self, reason: str, grace: float = 1.0) -> None:
        """Close every stream, give viewers ``grace`` seconds to finish, then cancel them.

        A viewer whose client reads nothing waits on a full sink and would otherwise
        hold the server's shutdown until its drain timeout.
        """
        self.accepting = False
        streams = list(self._streams.values())
        # Their variants' streams too (closing a stream ends and forgets its variants).
        streams += [variant.stream for s in streams for variant in s.variants.values()]
        self.close_all(reason)
        deadline = time.monotonic() + grace
        while any(stream.viewers for stream in streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for stream in streams:
            for viewer in list(stream.viewers):
                if viewer.task is not None:
                    viewer.task.cancel()

    async def stop(self) -> None:
        """Close every stream (ending viewer responses) and stop the ticker."""
        self.close_all("server shutdown")
        await cancel_and_wait(self._ticker)

    async def _tick_forever(self) -> None:
        period = min(self.settings.resend_seconds, 1.0) / 4
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                stream.tick(now)
                self._close_stalled(stream, now)
                for variant in list(stream.variants.values()):
                    variant.stream.tick(now)
                    self._close_stalled(variant.stream, now)

    def _close_stalled(self, stream: Stream, now: float) -> None:
        limit = self.settings.viewer_stall_seconds
        for viewer in list(stream.viewers):
            if viewer.sending_since and now - viewer.sending_since > limit:
                log.warning(
                    "closing a viewer of %s: its socket took nothing for %.0f s",
                    stream.name,
                    now - viewer.sending_since,
                )
                viewer.closed = True
                viewer.sending_since = 0.0
                if viewer.task is not None:
                    viewer.task.cancel()
