"""Live streams: the latest frame, a small ring buffer, viewers and fan-out.

A published frame keeps the uploaded JPEG and the head of its MJPEG part, built
once; ``publish`` writes those same pieces to every idle viewer itself (from 8
viewers on, from one memfd with ``sendfile``). Viewers always take the newest frame,
so a slow one skips frames and never holds up the publisher or another viewer.
Everything here runs on the event loop and never blocks: listeners (the recorder, metrics) get each frame through
:class:`StreamListener` and must hand it off without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from .aio import cancel_and_wait
from .config import StreamsSettings
from .errors import ApiError, InvalidStreamName, StreamLimitReached, ViewerLimitReached
from .jpeg import JpegInfo

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
BOUNDARY = "frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
_TICK = object()  # wake-up value: nothing new was published, re-send the last frame
_CLOSED = object()  # wake-up value: the stream or the viewer has ended
_LAGGING = object()  # wake-up value: a frame was not pushed (full socket); catch up
SENDFILE_VIEWERS = 8  # a frame's memfd pays off from about this many viewers (Frame.chunk_file)


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


def part_head(size: int, timestamp: float) -> bytes:
    """The boundary line and headers of a frame's MJPEG part (the JPEG and CRLF follow)."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {size}\r\n"
        f"X-Timestamp: {timestamp:.6f}\r\n\r\n"
    ).encode("ascii")


def build_part(jpeg: bytes, timestamp: float) -> tuple[bytes, int]:
    """The MJPEG part for one frame as one bytes object, and the offset of the JPEG."""
    head = part_head(len(jpeg), timestamp)
    return b"".join((head, jpeg, b"\r\n")), len(head)


@dataclass(slots=True, eq=False)
class Frame:
    """One accepted JPEG, as received, and the head of its MJPEG part.

    The part is never joined into one bytes object on the hot paths: viewers write
    (size line, head, JPEG, CRLF) with ``writelines``, so the uploaded bytes are the
    only copy of the image (a join cost ≈5 % of the server's time in long-lived ingest).
    """

    seq: int
    timestamp: float  # wall clock at arrival (epoch seconds)
    monotonic: float  # monotonic clock at arrival
    width: int
    height: int
    size: int
    head: bytes  # the part's boundary line and headers
    jpeg: bytes | memoryview  # the JPEG as uploaded (a view into a multipart body)
    # Viewers may send it from a memfd: enough of them to pay off, and not released.
    sendfile: bool = False
    _file: int | None = field(default=None, repr=False)
    _part: bytes | None = field(default=None, repr=False)

    def chunk_pieces(self, start: int = 0) -> tuple:
        """The part framed as one HTTP/1.1 chunk, from byte ``start`` on, as pieces for
        ``writelines``: the transport writes them with one ``writev``, nothing copied."""
        pieces = (b"%x\r\n" % self.part_size, self.head, self.jpeg, b"\r\n\r\n")
        if not start:
            return pieces
        out = []
        for piece in pieces:
            if start >= len(piece):
                start -= len(piece)
            else:
                out.append(memoryview(piece)[start:] if start else piece)
                start = 0
        return tuple(out)

    @property
    def chunk_size(self) -> int:
        """Bytes in the framed chunk."""
        return len(b"%x" % self.part_size) + self.part_size + 4

    @property
    def part_size(self) -> int:
        """Bytes in the MJPEG part: head, JPEG and the CRLF after it."""
        return len(self.head) + self.size + 2

    @property
    def part(self) -> bytes:
        """The MJPEG part as one bytes object, for viewers on ASGI ``send``: joined on
        first use and shared by them until :meth:`release`."""
        if self._part is None:
            self._part = b"".join((self.head, self.jpeg, b"\r\n"))
        return self._part

    def chunk_file(self) -> int | None:
        """A memfd holding the framed chunk, made on first use, for ``os.sendfile``.

        The kernel sends from the file's pages by reference instead of copying the chunk
        into every viewer's socket buffer: on loopback that lifts the fan-out ceiling
        from ≈4.3 to ≈6.7 GB/s (docs/bench.md). The file is written once and never
        changed, so pages still queued in a socket stay valid after it is closed.
        Making the file costs ≈25 µs (mostly the kernel's page allocation) against ≈4 µs
        saved per 42 KB viewer write, so :meth:`Stream.publish` sets :attr:`sendfile`
        only for streams with ``SENDFILE_VIEWERS`` viewers or more. ``None`` otherwise,
        where memfd is unavailable, and after :meth:`release`.
        """
        if self._file is None and self.sendfile:
            self.sendfile = False  # a failure is not retried: viewers use writelines
            try:
                fd = os.memfd_create("robogpt-frame", os.MFD_CLOEXEC)
            except (AttributeError, OSError):
                return None
            try:
                if os.writev(fd, self.chunk_pieces()) != self.chunk_size:
                    raise OSError("short write to memfd")
            except OSError:
                os.close(fd)
                return None
            self._file, self.sendfile = fd, True
        return self._file

    def release(self) -> None:
        """Drop the joined part and close the memfd: only the latest frame is ever sent
        to viewers (one still sending the joined part holds its own reference)."""
        self._part = None
        self.sendfile = False
        if self._file is not None:
            fd, self._file = self._file, None
            os.close(fd)


class FrameSink(Protocol):
    """Where a viewer's frames go when the stream itself writes them (web/chunks.py)."""

    @property
    def paused(self) -> bool:
        """Its socket buffer is full: wait with :meth:`drain` before the next frame."""

    async def drain(self) -> None:
        """Return once the socket takes writes again (or the client has gone)."""

    def write_frame(self, frame: Frame) -> bool:
        """Queue ``frame`` without blocking; ``False`` once the client has gone."""


class StreamListener(Protocol):
    """Something that follows every stream (the recorder, metrics). Must not block."""

    def stream_opened(self, stream: Stream) -> None: ...

    def frame_published(self, stream: Stream, frame: Frame) -> None: ...

    def stream_closed(self, stream: Stream, reason: str) -> None: ...


@dataclass(slots=True, eq=False)
class Viewer:
    """One open ``GET /stream/<name>`` response."""

    last_seq: int = 0
    closed: bool = False
    sending_since: float = 0.0  # monotonic time a write started; 0 when idle
    task: asyncio.Task | None = None
    direct: bool = False  # writes pre-framed chunks to the transport (web/chunks.py)
    waiter: asyncio.Future | None = None

    def close(self) -> None:
        """End this viewer's response at its next wake-up."""
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(_CLOSED)


class Stream:
    """A named live stream: latest frame, ring buffer, viewers, counters."""

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
        self.buffer: deque[Frame] = deque(maxlen=settings.max_buffer_frames)
        self.viewers: set[Viewer] = set()
        self.latest: Frame | None = None
        self.total_frames = 0
        self.bytes_in = 0
        self.frames_skipped = 0  # frames that slow viewers never got
        self.frames_sent = 0
        self.closed = False
        self.last_wake = time.monotonic()
        self._clock = clock
        self._listeners = listeners
        self._waiters: list[asyncio.Future] = []  # viewers woken per frame (ASGI send)
        self._parked: dict[Viewer, FrameSink] = {}  # idle viewers publish writes to itself
        self._arrivals: deque[float] = deque(maxlen=256)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, jpeg: bytes, info: JpegInfo) -> Frame:
        """Accept one validated JPEG: build its part, wake viewers, tell listeners."""
        now = self._clock()
        mono = time.monotonic()
        self.total_frames += 1
        frame = Frame(
            self.total_frames, now, mono, info.width, info.height, len(jpeg),
            head=part_head(len(jpeg), now), jpeg=jpeg,
            sendfile=len(self.viewers) >= SENDFILE_VIEWERS,
        )
        if self.latest is not None:
            self.latest.release()  # viewers only ever send the latest frame
        self.latest = frame
        self.buffer.append(frame)
        self.bytes_in += len(jpeg)
        self._arrivals.append(mono)
        if self._parked:
            self._push(frame)
        self._wake(frame)
        for listener in self._listeners:
            try:
                listener.frame_published(self, frame)
            except Exception:  # a broken listener must never cost a frame
                log.exception("listener %r failed on stream %s", listener, self.name)
        return frame

    def _push(self, frame: Frame) -> None:
        # Write the frame to every idle viewer from here: no task wakes up per viewer
        # per frame. One whose socket is full, or gone, is handed back to its own task,
        # which also meets any error of its own: the publisher never sees it.
        lagging = []
        for viewer, sink in self._parked.items():
            try:
                sent = not viewer.closed and not sink.paused and self._send(viewer, sink, frame)
            except Exception:
                log.debug("pushing a frame of %s to a viewer failed", self.name, exc_info=True)
                sent = False
            if not sent:
                lagging.append(viewer)
        for viewer in lagging:
            self._unpark(viewer, _LAGGING)

    def _send(self, viewer: Viewer, sink: FrameSink, frame: Frame) -> bool:
        if not sink.write_frame(frame):
            return False
        if viewer.last_seq and frame.seq > viewer.last_seq + 1:
            self.frames_skipped += frame.seq - viewer.last_seq - 1
        viewer.last_seq = frame.seq  # never lower: a re-send is the same frame
        self.frames_sent += 1
        return True

    def _unpark(self, viewer: Viewer, value: object) -> None:
        del self._parked[viewer]
        if viewer.waiter is not None and not viewer.waiter.done():
            viewer.waiter.set_result(value)

    def _wake(self, value: object, parked: bool = False) -> None:
        self.last_wake = time.monotonic()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(value)
        if parked:
            for viewer in list(self._parked):
                self._unpark(viewer, value)

    def tick(self, now: float) -> None:
        """Wake viewers of a quiet stream so they re-send the last frame."""
        waiting = self._waiters or self._parked
        if waiting and now - self.last_wake >= self.settings.resend_seconds:
            self._wake(_TICK, parked=True)

    def close(self, reason: str) -> None:
        """End the stream: every viewer's response finishes, listeners are told."""
        if self.closed:
            return
        self.closed = True
        self._wake(_CLOSED, parked=True)
        if self.latest is not None:
            self.latest.release()
        for viewer in list(self.viewers):
            viewer.close()
        for listener in self._listeners:
            try:
                listener.stream_closed(self, reason)
            except Exception:
                log.exception("listener %r failed closing stream %s", listener, self.name)

    # -- viewing ------------------------------------------------------------------------

    def add_viewer(self) -> Viewer:
        """Register a viewer, or raise :class:`ViewerLimitReached`."""
        if len(self.viewers) >= self.settings.max_viewers:
            raise ViewerLimitReached(
                f"stream '{self.name}' already has {len(self.viewers)} viewers (max_viewers)"
            )
        viewer = Viewer()
        self.viewers.add(viewer)
        return viewer

    def remove_viewer(self, viewer: Viewer) -> None:
        """Forget a viewer whose response has ended, counting the frames it never got."""
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            if viewer.last_seq and self.latest is not None:
                self.frames_skipped += self.latest.seq - viewer.last_seq

    async def next_frame(self, viewer: Viewer) -> Frame | None:
        """The next frame ``viewer`` should send; ``None`` once the viewer or stream ends.

        Returns a newer frame as soon as one is published, or the latest frame again
        when the stream has been quiet for ``resend_seconds`` (browsers show the
        second-to-last part of a multipart response until the next one arrives).
        """
        loop = asyncio.get_running_loop()
        while True:
            if viewer.closed or self.closed:
                return None
            latest = self.latest
            if latest is not None and latest.seq > viewer.last_seq:
                if viewer.last_seq:
                    self.frames_skipped += latest.seq - viewer.last_seq - 1
                viewer.last_seq = latest.seq
                return latest
            waiter = loop.create_future()
            viewer.waiter = waiter
            self._waiters.append(waiter)
            try:
                woke = await waiter
            finally:
                viewer.waiter = None
            if woke is _TICK and self.latest is not None and not viewer.closed:
                return self.latest

    async def serve(self, viewer: Viewer, sink: FrameSink) -> bool:
        """Send ``viewer`` every frame through ``sink`` until it ends.

        Returns ``True`` when the stream or the viewer ended (the response can finish),
        ``False`` when the client has gone. While the viewer is idle it is *parked*:
        :meth:`publish` writes each new frame to its sink directly, which saves a future,
        a task wake-up and a coroutine switch per viewer per frame. The viewer's own task
        only runs to wait out a full socket buffer (then it sends the newest frame, not
        the one it was holding), to re-send on a quiet stream, and to end.
        """
        loop = asyncio.get_running_loop()
        while True:
            if sink.paused:
                viewer.sending_since = time.monotonic()  # the stall detector watches this
                await sink.drain()
                viewer.sending_since = 0.0
            if viewer.closed or self.closed:
                return True
            latest = self.latest
            if latest is not None and latest.seq > viewer.last_seq:
                if not self._send(viewer, sink, latest):
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
                if not self._send(viewer, sink, self.latest):
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
            "viewer_count": len(self.viewers),
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
            "buffer_size": len(self.buffer),
            "max_buffer_frames": self.buffer.maxlen,
            "has_current_frame": latest is not None,
            "bytes_in": self.bytes_in,
            "last_frame_size": latest.size if latest else None,
            "frames_dropped_slow_viewers": self.frames_skipped,
            "direct_viewers": sum(viewer.direct for viewer in self.viewers),
        }


class StreamRegistry:
    """All live streams of the process, with their limit and the resend ticker."""

    def __init__(self, settings: StreamsSettings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.listeners: list[StreamListener] = []
        self._streams: dict[str, Stream] = {}
        self._clock = clock
        self._ticker: asyncio.Task | None = None
        self.accepting = True  # False once shutdown begins: no new streams

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
        validate_stream_name(name)
        if not self.accepting:
            raise ApiError("the server is shutting down", code="shutting_down", status_code=503)
        if len(self._streams) >= self.settings.max_concurrent:
            raise StreamLimitReached(
                f"cannot create stream '{name}': {len(self._streams)} streams are live "
                f"(streams.max_concurrent = {self.settings.max_concurrent})"
            )
        stream = Stream(name, self.settings, self.listeners, self._clock)
        self._streams[name] = stream
        log.info("stream %s created (%d live)", name, len(self._streams))
        for listener in self.listeners:
            try:
                listener.stream_opened(stream)
            except Exception:
                log.exception("listener %r failed opening stream %s", listener, name)
        return stream

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

        A viewer whose client reads nothing is stuck in a write and would otherwise hold
        the server's shutdown until uvicorn's drain timeout.
        """
        self.accepting = False
        streams = list(self._streams.values())
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
