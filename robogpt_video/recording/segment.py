"""One recording file: frames muxed into fragmented MP4 with their arrival timing.

Only the writer thread that owns a stream touches its segment, so nothing here locks.
``mjpeg`` muxes each uploaded JPEG as one packet (no decode, no encode, ≈30 µs a
frame); ``mp4v`` and ``h264`` decode the JPEG and encode it (≈3-7 ms a frame).
Fragmented MP4 writes a fragment per frame, so ``kill -9`` loses at most the last
frame instead of the whole file (a plain MP4's index is only written at the end).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av

from ..streams import Frame, iso
from .store import RecordingStore

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # packet timestamps are milliseconds of arrival time
ENCODERS = {"mp4v": "mpeg4", "h264": "libx264"}
# Passthrough: every packet is a keyframe, so frag_keyframe already fragments each
# frame. Encoded streams have inter frames: fragment at every frame instead.
_FRAG = {
    "mjpeg": "frag_keyframe+empty_moov+default_base_moof",
    "mp4v": "frag_every_frame+empty_moov+default_base_moof",
    "h264": "frag_every_frame+empty_moov+default_base_moof",
}


class Segment:
    """An open ``.mp4`` of one stream plus the facts its sidecar reports."""

    def __init__(self, path: Path, stream: str, first: Frame, codec: str, target_fps: float):
        self.path = path
        self.stream = stream
        self.codec = codec
        self.target_fps = target_fps
        self.width, self.height = first.width, first.height
        self.start_ts = first.timestamp
        self.start_mono = first.monotonic
        self.frames = 0
        self.frames_dropped = 0
        self.bytes_written = 0
        self._last_pts = -1
        self._last_duration = max(1, round(1000 / target_fps))
        self._decoder = None
        options = {"movflags": _FRAG[codec], "flush_packets": "1"}
        self._container = av.open(str(path), "w", format="mp4", options=options)
        try:
            self._stream = self._add_stream(codec)
        except BaseException:
            self._container.close()
            raise

    def _add_stream(self, codec: str):
        if codec == "mjpeg":
            stream = self._container.add_stream("mjpeg")
            stream.pix_fmt = "yuvj420p"
        else:
            stream = self._container.add_stream(ENCODERS[codec])
            stream.pix_fmt = "yuv420p"
            context = stream.codec_context
            context.time_base = TIME_BASE
            context.gop_size = max(1, round(self.target_fps))
            if codec == "h264":
                # No B-frames or look-ahead: each frame leaves the encoder at once.
                context.options = {"preset": "veryfast", "tune": "zerolatency"}
            else:
                context.bit_rate = 4_000_000
            self._decoder = av.CodecContext.create("mjpeg", "r")
        # 4:2:0 encoders need even sizes; a JPEG may be odd (one edge pixel is lost).
        stream.width = self.width if codec == "mjpeg" else self.width & ~1
        stream.height = self.height if codec == "mjpeg" else self.height & ~1
        stream.time_base = TIME_BASE
        return stream

    @property
    def age(self) -> float:
        """Seconds of arrival time covered so far (first frame to last frame)."""
        return max(0, self._last_pts) / 1000

    def fits(self, frame: Frame, segment_seconds: float) -> bool:
        """Whether ``frame`` belongs in this segment (same size, not past its length)."""
        return (
            frame.width == self.width
            and frame.height == self.height
            and frame.monotonic - self.start_mono < segment_seconds
        )

    def _timing(self, frame: Frame) -> tuple[int, int]:
        pts = round((frame.monotonic - self.start_mono) * 1000)
        if pts <= self._last_pts:  # two frames in the same millisecond: keep pts increasing
            pts = self._last_pts + 1
        if self._last_pts >= 0:
            self._last_duration = pts - self._last_pts
        return pts, self._last_duration

    def write(self, frame: Frame) -> None:
        """Append one frame at its arrival time (raises ``OSError`` on disk errors)."""
        pts, duration = self._timing(frame)
        if self._decoder is None:
            packet = av.Packet(frame.jpeg)
            packet.stream = self._stream
            packet.pts = packet.dts = pts
            packet.duration = duration
            packet.time_base = TIME_BASE
            self._container.mux(packet)
            self.bytes_written += frame.size
        else:
            self._encode(frame, pts)
        self._last_pts = pts
        self.frames += 1

    def _encode(self, frame: Frame, pts: int) -> None:
        try:
            decoded = self._decoder.decode(av.Packet(frame.jpeg))
        except av.FFmpegError as exc:  # a JPEG the header check passed but libav cannot read
            log.warning("%s: frame not recorded, cannot decode it: %s", self.stream, exc)
            self.frames_dropped += 1
            self.frames -= 1
            return
        for image in decoded:
            image = image.reformat(self._stream.width, self._stream.height, "yuv420p")
            image.pts = pts
            image.time_base = TIME_BASE
            for packet in self._stream.encode(image):
                self._container.mux(packet)
                self.bytes_written += packet.size

    def close(self) -> None:
        """Flush the encoder and write the trailer; the file is complete afterwards."""
        try:
            if self._decoder is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()

    def abort(self) -> None:
        """Close after an error, ignoring further errors (the file keeps what it has)."""
        try:
            self._container.close()
        except Exception:  # the disk already failed; recovery repairs the sidecar later
            log.debug("closing %s after an error failed too", self.path, exc_info=True)

    def sidecar(self, status: str) -> dict:
        """The sidecar metadata: the brief's fields plus status, size and drops."""
        duration = (self._last_pts + self._last_duration) / 1000 if self.frames else 0.0
        try:
            size = self.path.stat().st_size
        except OSError:
            size = None
        return sidecar_dict(
            stream=self.stream,
            path=self.path,
            start_ts=self.start_ts,
            duration=duration,
            frames=self.frames,
            target_fps=self.target_fps,
            codec=self.codec,
            status=status,
            width=self.width,
            height=self.height,
            size=size,
            dropped=self.frames_dropped,
        )

    def write_sidecar(self, status: str) -> None:
        """Write the sidecar atomically."""
        RecordingStore.write_sidecar(self.path, self.sidecar(status))


def sidecar_dict(
    *, stream, path, start_ts, duration, frames, target_fps, codec, status, width, height,
    size, dropped,
) -> dict:
    """Sidecar fields in one order for the writer and for recovery."""
    recording = status == "recording"
    return {
        "stream_name": stream,
        "start_time": iso(start_ts),
        "end_time": None if recording else iso(start_ts + duration),
        "duration_seconds": round(duration, 3),
        "total_frames": frames,
        "average_fps": round(frames / duration, 3) if duration > 0 else 0.0,
        "target_fps": int(target_fps) if float(target_fps).is_integer() else target_fps,
        "codec": codec,
        "recording_path": str(path),
        "status": status,
        "width": width,
        "height": height,
        "size_bytes": size,
        "frames_dropped": dropped,
    }
