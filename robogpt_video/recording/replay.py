"""Read a recording back as JPEG frames with their recorded timing (for ``/play``).

MJPEG recordings hand out their packets as they are (each is the uploaded JPEG);
``mp4v`` / ``h264`` recordings are decoded and re-encoded to JPEG. Blocking: call
:meth:`Replay.next_batch` from a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import av


class Replay:
    """An open recording, read a few frames at a time."""

    def __init__(self, path: Path, batch: int = 8):
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        self._passthrough = self._stream.codec_context.name == "mjpeg"
        self._packets = self._container.demux(self._stream)
        self._batch = batch
        self._lock = threading.Lock()
        self._closed = False

    def next_batch(self) -> list[tuple[float, bytes]]:
        """Up to ``batch`` frames as (seconds from the start, JPEG); empty at the end."""
        with self._lock:
            if self._closed:
                return []
            out: list[tuple[float, bytes]] = []
            while len(out) < self._batch:
                try:
                    packet = next(self._packets)
                except (StopIteration, av.FFmpegError):  # end, or a torn last fragment
                    break
                out.extend(self._frames(packet))
            return out

    def _frames(self, packet) -> list[tuple[float, bytes]]:
        if self._passthrough:
            if packet.size == 0 or packet.pts is None:
                return []
            return [(float(packet.pts * packet.time_base), bytes(packet))]
        # Imported here: simplejpeg needs NumPy (≈15 MB), and only this replay uses it.
        import simplejpeg

        frames = []
        for frame in packet.decode():  # an empty packet flushes the decoder at the end
            rgb = frame.to_ndarray(format="rgb24")
            frames.append((float(frame.time), simplejpeg.encode_jpeg(rgb, quality=85)))
        return frames

    def close(self) -> None:
        """Release the file (waits for a batch being read)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._container.close()
