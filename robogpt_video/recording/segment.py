"""One recording file: frames in fragmented MP4 with their arrival timing.

Only the writer thread that owns a stream touches its segment, so nothing here locks.
``mjpeg`` stores each uploaded JPEG as one sample (no decode, no encode);
``mp4v`` and ``h264`` decode the JPEG and encode it with PyAV (≈5-9 ms a frame).
Fragmented MP4 is playable while written and after a crash: ``kill -9`` loses the
frames not written yet (a plain MP4's index is only written at the end).

Passthrough (:class:`PassthroughSegment`) takes PyAV's own ``ftyp``+``moov`` for the
file's header and then writes each batch of frames as one ``moof``+``mdat`` fragment
with a single ``os.writev`` of the JPEG bytes as they are. Muxing each frame through
PyAV cost ≈16-20 µs of Python a frame plus a GIL hand-off around every write; at 300
streams the writer threads could no longer get the GIL often enough and dropped
frames. This costs a few µs of Python a frame (docs/recording.md).
"""

from __future__ import annotations

import io
import logging
import os
import struct
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

from ..streams import Frame, iso
from .store import RecordingStore

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # packet timestamps are milliseconds of arrival time
ENCODERS = {"mp4v": "mpeg4", "h264": "libx264"}
# Encoded streams have inter frames: PyAV's muxer writes a fragment at every frame.
_TRANSCODE_MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"
# Passthrough: PyAV writes only the header (PassthroughSegment writes the fragments).
_PASSTHROUGH_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


class Segment:
    """An open ``.mp4`` of one stream plus the facts its sidecar reports.

    This class transcodes (``mp4v``, ``h264``) through PyAV's muxer;
    :class:`PassthroughSegment` replaces the writing for ``mjpeg``. Frames go in with
    :meth:`write`; they are on disk after :meth:`flush` (the recorder flushes each
    stream once per batch) or :meth:`close`.
    """

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
        self.fence: int | None = None  # the cluster's fencing token (docs/cluster.md)
        self._last_pts = -1
        self._last_duration = max(1, round(1000 / target_fps))
        self._open()

    def _open(self) -> None:
        """Create the file and write its header with PyAV's muxer."""
        options = {"movflags": _TRANSCODE_MOVFLAGS, "flush_packets": "1"}
        self._container = av.open(str(self.path), "w", format="mp4", options=options)
        try:
            self._stream = self._add_stream(self.codec)
            self._decoder = av.CodecContext.create("mjpeg", "r")
        except BaseException:
            self._container.close()
            raise

    def _add_stream(self, codec: str):
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
        # 4:2:0 encoders need even sizes; a JPEG may be odd (one edge pixel is lost).
        stream.width = self.width & ~1
        stream.height = self.height & ~1
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

    def flush(self) -> None:
        """Write what :meth:`write` kept back (PyAV segments write at once)."""

    @property
    def unflushed(self) -> int:
        """Frames counted in :attr:`frames` that are not on disk yet."""
        return 0

    def write(self, frame: Frame) -> None:
        """Append one frame at its arrival time (raises ``OSError`` on disk errors)."""
        pts, _ = self._timing(frame)
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
            image = for_encoder(image, self._stream, pts)
            for packet in self._stream.encode(image):
                self._container.mux(packet)
                self.bytes_written += packet.size

    def close(self) -> None:
        """Flush the encoder and write the trailer; the file is complete afterwards."""
        try:
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
        meta = sidecar_dict(
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
        if self.fence is not None:
            meta["fence"] = self.fence
        return meta

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


_BOX = struct.Struct(">I4s")
_MFHD = struct.Struct(">I4sII")  # size, type, version+flags, sequence number
_TFHD = struct.Struct(">I4sII")  # ..., track ID
_TFDT = struct.Struct(">I4sIQ")  # version 1: 64-bit base media decode time
_TRUN = struct.Struct(">I4sIIi")  # ..., sample count, data offset
_SAMPLE = struct.Struct(">III")  # duration, size, flags
_TFHD_BASE_IS_MOOF = 0x020000
_TRUN_FLAGS = 0x000001 | 0x000100 | 0x000200 | 0x000400  # offset, duration, size, flags
_SYNC_SAMPLE = 0x02000000  # depends on no other sample (every JPEG is a key frame)
_TRACK = 1
MAX_FRAGMENT_FRAMES = 256  # the recorder flushes at this; writev takes ≤ 1024 buffers


class PassthroughSegment(Segment):
    """``mjpeg``: PyAV writes the header once, then frames go out as raw fragments."""

    _headers: dict[tuple[int, int], tuple[bytes, int]] = {}  # (w, h) -> (ftyp+moov, timescale)

    def _open(self) -> None:
        """Create the file and write PyAV's ``ftyp``+``moov`` for this frame size."""
        self._pending: list[tuple[int, Frame]] = []  # (pts in ms, frame) not written yet
        self._sequence = 0
        self._complete = 0  # file size up to the end of the last whole write
        header, self._scale = self._header(self.width, self.height)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o644)
        try:
            self._write_all([header])
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def _header(cls, width: int, height: int) -> tuple[bytes, int]:
        """The ``ftyp``+``moov`` PyAV writes for an MJPEG track of this size, and the
        track's timescale (made once per size)."""
        key = (width, height)
        if key not in cls._headers:
            out = io.BytesIO()
            options = {"movflags": _PASSTHROUGH_MOVFLAGS}
            with av.open(out, "w", format="mp4", options=options) as container:
                stream = container.add_stream("mjpeg")
                stream.pix_fmt = "yuvj420p"
                stream.width, stream.height = width, height
                stream.time_base = TIME_BASE
                container.start_encoding()
                header = out.getvalue()
            cls._headers[key] = (header, _timescale(header))
        return cls._headers[key]

    @property
    def unflushed(self) -> int:
        return len(self._pending)  # including the newest, which flush() keeps back

    def write(self, frame: Frame) -> None:
        """Keep one frame for the next :meth:`flush`, at its arrival time."""
        pts, _ = self._timing(frame)
        self._pending.append((pts, frame))
        self._last_pts = pts
        self.frames += 1
        self.bytes_written += frame.size  # as for PyAV: counted when handed to the muxer

    def flush(self) -> None:
        """Write the kept frames as one fragment, all but the newest (raises ``OSError``).

        A sample lasts until the next frame arrived, so the newest frame waits for the
        next one (or :meth:`close`) to learn its duration, as FFmpeg's own fragmenting
        muxer does; ``kill -9`` can lose that one frame. The fragment's ``tfdt`` is its
        first frame's arrival time.
        """
        self._write_fragment(self._pending[:-1])
        del self._pending[:-1]

    def _write_fragment(self, frames: list[tuple[int, Frame]]) -> None:
        if not frames:
            return
        scale = self._scale
        count = len(frames)
        trun_size = _TRUN.size + _SAMPLE.size * count
        traf_size = 8 + _TFHD.size + _TFDT.size + trun_size
        moof_size = 8 + _MFHD.size + traf_size
        self._sequence += 1
        head = [
            _BOX.pack(moof_size, b"moof"),
            _MFHD.pack(_MFHD.size, b"mfhd", 0, self._sequence),
            _BOX.pack(traf_size, b"traf"),
            _TFHD.pack(_TFHD.size, b"tfhd", _TFHD_BASE_IS_MOOF, _TRACK),
            _TFDT.pack(_TFDT.size, b"tfdt", 1 << 24, frames[0][0] * scale // 1000),
            _TRUN.pack(trun_size, b"trun", _TRUN_FLAGS, count, moof_size + 8),
        ]
        after = [pts for pts, _ in self._pending[1:]]  # arrival of each one's successor
        data = 0
        for (pts, frame), following in zip(frames, after + [None] * count):
            duration = (following - pts) if following is not None else self._last_duration
            head.append(_SAMPLE.pack(duration * scale // 1000, frame.size, _SYNC_SAMPLE))
            data += frame.size
        head.append(_BOX.pack(data + 8, b"mdat"))
        self._write_all([b"".join(head), *(frame.jpeg for _, frame in frames)])

    def _write_all(self, pieces: list) -> None:
        """Write every piece, or raise with the file cut back to the last whole write
        (a fragment the disk took only part of would end the file in a torn frame)."""
        views = [memoryview(piece) for piece in pieces]
        total = sum(len(view) for view in views)
        try:
            while views:
                written = os.writev(self._fd, views)
                if not written:
                    raise OSError(f"write to {self.path} wrote nothing")
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if views and written:
                    views[0] = views[0][written:]
        except BaseException:
            try:
                os.ftruncate(self._fd, self._complete)
                os.lseek(self._fd, self._complete, os.SEEK_SET)
            except OSError:
                log.debug("cannot cut %s back after a failed write", self.path, exc_info=True)
            raise
        self._complete += total

    def close(self) -> None:
        """Write the last fragment and close the file."""
        try:
            self._write_fragment(self._pending)
            self._pending = []
        finally:
            self._close_fd()

    def abort(self) -> None:
        """Close after an error; frames not written are lost (the file keeps the rest)."""
        self.frames -= len(self._pending)
        self.bytes_written -= sum(frame.size for _, frame in self._pending)
        self._pending = []
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                log.debug("closing %s failed", self.path, exc_info=True)


def for_encoder(image: av.VideoFrame, stream, pts: int) -> av.VideoFrame:
    """A decoded JPEG made ready for ``stream``'s encoder: its size, yuv420p, ``pts`` in
    :data:`TIME_BASE`. A decoded JPEG is marked as a key picture, which an encoder obeys;
    unmarked, key frames come by ``gop_size`` (key frames only made segments and clips
    ≈30× larger)."""
    image = image.reformat(stream.width, stream.height, "yuv420p")
    image.pict_type = PictureType.NONE
    image.pts = pts
    image.time_base = TIME_BASE
    return image


def open_segment(path: Path, stream: str, first: Frame, codec: str, target_fps: float) -> Segment:
    """A new segment of ``codec`` at ``path`` (nothing written yet but the header)."""
    kind = PassthroughSegment if codec == "mjpeg" else Segment
    return kind(path, stream, first, codec, target_fps)


def _timescale(header: bytes) -> int:
    """The media timescale in the ``mdhd`` box of a one-track header."""
    at = header.find(b"mdhd")
    if at < 4:
        raise ValueError("no mdhd box in the MP4 header")
    version = header[at + 4]
    offset = at + 8 + (16 if version == 1 else 8)
    return struct.unpack_from(">I", header, offset)[0]
