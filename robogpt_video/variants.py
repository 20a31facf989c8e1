"""Resized versions of a live stream (``?width=&quality=``), shared by their viewers.

A :class:`Variant` is one (width, quality) of one stream while at least one viewer
watches it. It owns a child :class:`~robogpt_video.streams.Stream` (not in the
registry) whose frames are the parent's, resized and re-encoded: its viewers are
served by the same engine and framed once per frame like any stream's. The parent's
``publish`` feeds each frame to its variants (one ``if self.variants`` when there are
none); a variant encodes at most one frame at a time in a worker thread, and a frame
that arrives while it is busy replaces the one waiting, so nothing queues up behind a
slow encoder (the replaced frame counts as ``variant_frames_skipped_busy``). When
every viewer of a variant has an ``?fps=`` cap, only frames one of them is due to
take are encoded.

Resizing is libjpeg-turbo's (simplejpeg): the JPEG is decoded straight at the
smallest of its DCT scales (1/8 steps) that is at least the asked size, which is
cheaper than a full decode; when that scale is not the asked width exactly, FFmpeg's
swscale (PyAV, ``area``) takes it the rest of the way. Then it is encoded with 4:2:0
chroma subsampling. Frames no wider than the asked width go out as they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .streams import VIEWER_COUNTERS, Frame, Stream

log = logging.getLogger(__name__)

WIDTH_RANGE = (16, 4096)
QUALITY_RANGE = (1, 100)
DEFAULT_QUALITY = 75
MAX_FPS = 120.0


def target_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """The size a ``width x height`` frame is resized to for ``max_width`` (kept if narrower)."""
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def resize_jpeg(jpeg, max_width: int, quality: int) -> tuple[bytes, int, int, float]:
    """``jpeg`` resized to ``max_width`` (aspect ratio kept) and re-encoded at ``quality``.

    Returns (JPEG, width, height, thread CPU seconds). Blocks: run it in a thread.
    """
    import simplejpeg

    started = time.thread_time()
    src_height, src_width = simplejpeg.decode_jpeg_header(jpeg)[:2]
    width, height = target_size(src_width, src_height, max_width)
    image = simplejpeg.decode_jpeg(jpeg, "rgb", min_width=width, min_height=height)
    if image.shape[1] != width or image.shape[0] != height:
        import av

        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        image = frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray()
    out = simplejpeg.encode_jpeg(image, quality, "rgb", colorsubsampling="420")
    return out, width, height, time.thread_time() - started


class Variant:
    """One (width, quality) of a stream, produced while someone watches it."""

    def __init__(self, parent: Stream, width: int, quality: int, executor: ThreadPoolExecutor):
        self.parent = parent
        self.width = width
        self.quality = quality
        self.key = (width, quality)
        self.stream = Stream(parent.name, parent.settings, [])  # its viewers and engine
        self.executor = executor
        self.users = 0
        self.busy = False
        self.waiting: Frame | None = None  # the newest frame that came while busy
        self.source_seq = 0  # the parent frame behind self.stream.latest
        self.closed = False

    def __repr__(self) -> str:
        return f"<Variant {self.parent.name} width={self.width} quality={self.quality}>"

    def feed(self, frame: Frame) -> None:
        """Take a new frame of the parent: encode it now, or when the worker is free."""
        if self.closed:
            return
        if self.busy:
            if self.waiting is not None:
                self.parent.variant_frames_skipped_busy += 1
            self.waiting = frame
        elif not self._wanted(frame):
            return
        elif frame.width <= self.width:  # no upscaling: the frame as it is
            self.source_seq = frame.seq
            self.stream.relay(frame.timestamp, frame.width, frame.height, frame.jpeg)
        else:
            self.busy = True
            future = asyncio.get_running_loop().run_in_executor(
                self.executor, resize_jpeg, frame.jpeg, self.width, self.quality
            )
            future.add_done_callback(lambda done: self._encoded(frame, done))

    def _wanted(self, frame: Frame) -> bool:
        """Whether a viewer would take ``frame``: one without a cap, or one whose next
        frame is due (the check ``Stream._skip`` makes, a little later, on the result)."""
        for viewer in self.stream.viewers:
            if not viewer.interval or frame.monotonic >= viewer.due - viewer.interval / 4:
                return True
        return not self.stream.viewers  # the first viewer is on its way

    def _encoded(self, frame: Frame, done: asyncio.Future) -> None:
        self.busy = False
        if self.closed:
            return
        try:
            jpeg, width, height, cpu = done.result()
        except Exception:
            log.exception("resizing a frame of %s for %r failed", self.parent.name, self)
        else:
            self.parent.variant_frames_encoded += 1
            self.parent.variant_encode_seconds += cpu
            self.source_seq = frame.seq
            self.stream.relay(frame.timestamp, width, height, jpeg)
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            self.feed(waiting)

    def close(self, reason: str) -> None:
        """End it: its viewers' responses end, frames in flight are thrown away."""
        self.closed = True
        self.waiting = None
        self.stream.close(reason)
        if self.parent.variants.get(self.key) is self:
            del self.parent.variants[self.key]


class Variants:
    """The worker threads that resize frames, and each stream's variants."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="variant")
        return self._executor

    def join(self, stream: Stream, width: int, quality: int) -> Variant:
        """The stream's (width, quality) variant, with one more user; made on first use."""
        key = (width, quality)
        variant = stream.variants.get(key)
        if variant is None:
            variant = stream.variants[key] = Variant(stream, width, quality, self.executor)
            if stream.closed:  # removed meanwhile: its viewer ends at once
                variant.close("stream closed")
            elif stream.latest is not None:  # its first viewer gets a frame at once
                variant.feed(stream.latest)
        variant.users += 1
        return variant

    def leave(self, variant: Variant) -> None:
        """One user fewer; the last one ends the variant (no more encoding)."""
        variant.users -= 1
        if variant.users <= 0:
            variant.close("no viewers")
            parent = variant.parent  # what its viewers got (and missed) stays counted
            for counter in VIEWER_COUNTERS:
                setattr(parent, counter, getattr(parent, counter) + getattr(variant.stream, counter))

    async def snapshot(self, stream: Stream, frame: Frame, width: int, quality: int) -> bytes:
        """``frame`` resized: a variant's output when it holds that very frame, else
        resized now in a worker thread."""
        variant = stream.variants.get((width, quality))
        if variant is not None and variant.source_seq == frame.seq:
            latest = variant.stream.latest
            if latest is not None:
                return bytes(latest.jpeg)
        if frame.width <= width:
            return bytes(frame.jpeg)
        loop = asyncio.get_running_loop()
        jpeg, _, _, _ = await loop.run_in_executor(
            self.executor, resize_jpeg, frame.jpeg, width, quality
        )
        return jpeg

    def shutdown(self) -> None:
        """Stop the worker threads (frames in flight are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
