"""Read a recording back as JPEG frames with their recorded timing (``/play``, ``/frame``).

MJPEG recordings hand out their packets as they are (each is the uploaded JPEG);
``mp4v`` / ``h264`` recordings are decoded and re-encoded to JPEG. Times are seconds
into the recording (the sample's presentation time). Blocking: call these from a
worker thread.

"The frame at ``t``" is the one on screen at that moment: the last frame that started
at or before ``t`` (the first frame for a ``t`` before it, the last one past the end).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av

#: Times sent back by a client that computed them (a frame's wall-clock time minus the
#: recording's start) may miss the frame's own time by float rounding: within this
#: much, a frame counts as started.
SLACK = 1e-4


def _encoder() -> Callable:
    # Imported here: simplejpeg needs NumPy (≈15 MB), and only transcoded replays use it.
    import simplejpeg

    return lambda frame: simplejpeg.encode_jpeg(frame.to_ndarray(format="rgb24"), quality=85)


class _Reader:
    """One open recording: (seconds, make_jpeg) for each frame, from a chosen time on."""

    def __init__(self, path: Path | str):
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.passthrough = self.stream.codec_context.name == "mjpeg"

    def seek(self, seconds: float) -> None:
        """Go to the frame at ``seconds`` (or the key frame before it); FFmpeg finds it
        from the fragments' sample tables without reading the frames before it."""
        if seconds > 0:
            self.container.seek(int(seconds / self.stream.time_base), stream=self.stream,
                                backward=True, any_frame=self.passthrough)

    def frames(self) -> Iterator[tuple[float, Callable[[], bytes]]]:
        """Every frame from the demuxer's position: (seconds, a call that gives its JPEG).
        A JPEG is only made (transcoded recordings) for frames whose call is made."""
        try:
            for packet in self.container.demux(self.stream):
                if self.passthrough:
                    if packet.size and packet.pts is not None:
                        data = bytes(packet)
                        yield float(packet.pts * packet.time_base), lambda data=data: data
                    continue
                encode = _encoder()
                for frame in packet.decode():  # an empty packet flushes the decoder
                    yield float(frame.time), lambda frame=frame: encode(frame)
        except av.FFmpegError:  # a torn last fragment (a crash, or a segment being written)
            return

    def close(self) -> None:
        self.container.close()


def _from(frames: Iterator, seconds: float) -> Iterator:
    """``frames`` from the frame at ``seconds`` on (the frames before it are skipped)."""
    held = None
    for item in frames:
        if item[0] <= seconds + SLACK:
            held = item  # started by then: the frame on screen at ``seconds`` so far
            continue
        if held is not None:
            yield held
            held = None
        yield item
    if held is not None:  # ``seconds`` is past the last frame: that frame
        yield held


class Replay:
    """An open recording, read a few frames at a time from ``start`` seconds on."""

    def __init__(self, path: Path | str, batch: int = 8, start: float = 0.0):
        self._reader = _Reader(path)
        self._reader.seek(start)
        self._frames = _from(self._reader.frames(), start)
        self._batch = batch
        self._lock = threading.Lock()
        self._closed = False

    def next_batch(self) -> list[tuple[float, bytes]]:
        """Up to ``batch`` frames as (seconds from the start, JPEG); empty at the end."""
        with self._lock:
            if self._closed:
                return []
            out: list[tuple[float, bytes]] = []
            for seconds, jpeg in self._frames:
                out.append((seconds, jpeg()))
                if len(out) == self._batch:
                    break
            return out

    def close(self) -> None:
        """Release the file (waits for a batch being read)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()


@dataclass(frozen=True)
class Still:
    """One frame and its neighbours' times (``None`` at either end)."""

    seconds: float
    jpeg: bytes
    previous: float | None
    next: float | None


def frame_at(path: Path | str, seconds: float) -> Still | None:
    """The frame at ``seconds`` with the times of the frames before and after it, for
    stepping one frame at a time; ``None`` if the file holds no frame (yet)."""
    reader = _Reader(path)
    try:
        reader.seek(seconds)
        chosen = before = after = None
        for item in reader.frames():
            if item[0] <= seconds + SLACK or chosen is None:
                if chosen is not None:
                    before = chosen[0]
                chosen = item
                if item[0] > seconds + SLACK:  # before the first frame: the first
                    seconds = item[0]
                continue
            after = item[0]
            break
        if chosen is None:
            return None
        jpeg = chosen[1]()
        if before is None and chosen[0] > 0:
            before = _previous(reader, chosen[0])
        return Still(chosen[0], jpeg, before, after)
    finally:
        reader.close()


def _previous(reader: _Reader, seconds: float) -> float | None:
    """The time of the last frame that starts before ``seconds`` (its packets are read,
    not decoded: from the key frame before it on, for transcoded recordings)."""
    tick = float(reader.stream.time_base)
    reader.container.seek(max(0, int(seconds / tick) - 1), stream=reader.stream,
                          backward=True, any_frame=reader.passthrough)
    found = None
    try:
        for packet in reader.container.demux(reader.stream):
            if not packet.size or packet.pts is None:
                continue
            at = float(packet.pts * packet.time_base)
            if at >= seconds - tick / 2:
                break
            found = at if found is None else max(found, at)
    except av.FFmpegError:
        pass
    return found
