"""Clips: a time range of a stream's recordings re-encoded as H.264 MP4 (docs/clips.md).

Blocking: everything here runs in a clip worker thread (``clip_jobs.py``), never on
the event loop. Segments are read through :class:`RecordingStore` (descriptors, no
link followed); a clip is written to a temp file in the cache folder, then renamed.

A frame's wall-clock time is its segment's ``start_time`` (sidecar, else the file
name) plus its packet time. The clip keeps those times from its first frame on, so a
pause between two segments stays a pause. Frames of another size than the first are
scaled to the first one's size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import av

from ..errors import NotFound
from .segment import TIME_BASE, for_encoder  # clip timestamps: ms from its first frame
from .store import RecordingFile, RecordingStore, fd_path, sidecar_time

log = logging.getLogger(__name__)

VIDEO, META, TEMP = ".mp4", ".json", ".tmp"
#: H.264 that browsers and phones play: Main profile, 4:2:0, the index (moov) first.
ENCODER = "libx264"
ENCODER_OPTIONS = {"profile": "main", "preset": "veryfast", "crf": "23"}
MUXER_OPTIONS = {"movflags": "+faststart"}
GOP_FRAMES = 60  # a key frame at least this often, so seeking lands near where asked


class ClipFailed(Exception):
    """The clip cannot be made; the message says why (the job's ``error``)."""


class Cancelled(Exception):
    """The server is stopping: the job ends without a clip."""


@dataclass(frozen=True, slots=True)
class Source:
    """A segment overlapping the range, as it was when the clip was asked for."""

    recording: RecordingFile
    start: float  # wall-clock time of its packet time 0
    size: int
    mtime_ns: int

    @property
    def identity(self) -> list:
        return [self.recording.name, self.size, self.mtime_ns]


def find_sources(
    store: RecordingStore, stream: str, start: float, end: float, now: float
) -> list[Source]:
    """The segments of ``stream`` overlapping ``[start, end)``, oldest first. One
    without an end time (being written, or without a sidecar) lasts until ``now``."""
    found = []
    for recording in store.list(stream):
        info = store.stat(recording)
        if info is None or info.st_size == 0:
            continue
        meta = store.read_sidecar(recording) or {}
        seg_start = sidecar_time(meta.get("start_time")) or recording.start.timestamp()
        seg_end = sidecar_time(meta.get("end_time")) or max(now, info.st_mtime)
        if seg_start < end and seg_end >= start:
            found.append(Source(recording, seg_start, info.st_size, info.st_mtime_ns))
    return found


def clip_id(stream: str, start: float, end: float, used: list[Source]) -> str:
    """The cache key: stream, range, and the identity (name, size, mtime) of each
    segment used; a segment that changed gives another clip."""
    key = json.dumps([stream, repr(start), repr(end), [s.identity for s in used]])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# --- reading the segments ---------------------------------------------------------------


def _open(store: RecordingStore, source: Source):
    name = source.recording.name
    try:
        # FFmpeg opens the very file the store opened and checked (/proc/self/fd).
        with store.open(source.recording) as video:
            return av.open(fd_path(video))
    except NotFound:
        raise ClipFailed(f"recording '{name}' is gone (deleted while the clip was made)") from None
    except (av.FFmpegError, OSError) as exc:
        raise ClipFailed(f"recording '{name}' cannot be read: {exc}") from None


def _packets(container, source: Source, start: float, end: float) -> Iterator[tuple[float, object]]:
    """(wall-clock time, packet) of each frame of the segment within ``[start, end)``."""
    stream = container.streams.video[0]
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:  # a torn last fragment (a segment being written)
            log.info("%s: read up to an unreadable part: %s", source.recording.name, exc)
            return
        if packet.size == 0 or packet.pts is None:
            continue
        at = source.start + float(packet.pts * packet.time_base)
        if at >= end:
            return
        if at >= start:
            yield at, packet


def count_frames(
    store: RecordingStore, used: list[Source], start: float, end: float,
    cancel: threading.Event,
) -> list[int]:
    """Frames each segment has within the range (packets counted, nothing decoded)."""
    counts = []
    for source in used:
        with _open(store, source) as container:
            if not container.streams.video:
                raise ClipFailed(f"recording '{source.recording.name}' holds no video")
            count = 0
            for _ in _packets(container, source, start, end):
                count += 1
                if cancel.is_set():
                    raise Cancelled()
            counts.append(count)
    return counts


# --- writing the clip -------------------------------------------------------------------


class _Encoder:
    """The H.264 MP4 being written, opened at the first frame (its size decides)."""

    def __init__(self, path: Path, threads: int):
        self.path, self.threads = path, threads
        self.container = None
        self.stream = None
        self.first: float | None = None
        self.last_pts = -1

    def _open(self, width: int, height: int) -> None:
        self.container = av.open(str(self.path), "w", format="mp4", options=MUXER_OPTIONS)
        stream = self.container.add_stream(ENCODER, options=dict(ENCODER_OPTIONS))
        # 4:2:0 needs even sizes: an odd JPEG loses its last column or row.
        stream.width, stream.height = max(2, width & ~1), max(2, height & ~1)
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        context = stream.codec_context
        context.time_base = TIME_BASE
        context.gop_size = GOP_FRAMES
        context.thread_count = self.threads
        self.stream = stream

    def write(self, at: float, image) -> None:
        if self.container is None:
            self._open(image.width, image.height)
            self.first = at
        pts = round((at - self.first) * 1000)
        if pts <= self.last_pts:  # two frames within a millisecond: keep pts increasing
            pts = self.last_pts + 1
        self.last_pts = pts
        for packet in self.stream.encode(for_encoder(image, self.stream, pts)):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()  # +faststart: the index moves before the media here

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # it failed already; the temp file is removed after this
                log.debug("closing %s after an error failed too", self.path, exc_info=True)


def encode(
    store: RecordingStore,
    used: list[Source],
    counts: list[int],
    start: float,
    end: float,
    path: Path,
    *,
    threads: int,
    on_frame: Callable[[], None],
    cancel: threading.Event,
) -> int:
    """Decode the frames of the range from ``used`` in order (at most ``counts[i]`` of
    segment i: what was counted, though a segment being written grows meanwhile) and
    write them to ``path`` as H.264 MP4. Returns the frames written."""
    encoder = _Encoder(path, threads)
    written = 0
    try:
        for source, count in zip(used, counts):
            if count == 0:
                continue
            with _open(store, source) as container:
                taken = 0
                for at, packet in _packets(container, source, start, end):
                    if cancel.is_set():
                        raise Cancelled()
                    try:
                        images = packet.decode()
                    except av.FFmpegError as exc:  # one JPEG libav cannot read
                        log.warning("%s: a frame cannot be decoded, left out: %s",
                                    source.recording.name, exc)
                        images = []
                    for image in images:
                        encoder.write(at, image)
                        written += 1
                    taken += 1
                    on_frame()
                    if taken >= count:
                        break
        if encoder.container is None:
            raise ClipFailed("no frame in the range could be decoded")
        encoder.finish()
    except BaseException:
        encoder.abort()
        raise
    return written


# --- the cache folder -------------------------------------------------------------------


def video_path(cache: Path, cid: str) -> Path:
    return cache / f"{cid}{VIDEO}"


def temp_path(cache: Path, cid: str, suffix: str) -> Path:
    """A temp name for this process (``serve --workers``: another may make it too)."""
    return cache / f".{cid}.{os.getpid()}{suffix}{TEMP}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(cache: Path, cid: str, video_tmp: Path, meta: dict) -> int:
    """Move a finished clip into the cache under its id with its metadata; its size.

    The metadata goes first: a clip is cached once its video is there.
    """
    _fsync(video_tmp)
    size = video_tmp.stat().st_size
    meta_tmp = temp_path(cache, cid, META)
    try:
        meta_tmp.write_text(json.dumps({**meta, "size_bytes": size}), encoding="utf-8")
        os.replace(meta_tmp, cache / f"{cid}{META}")
        os.replace(video_tmp, video_path(cache, cid))
    finally:
        meta_tmp.unlink(missing_ok=True)
    _fsync(cache)
    return size


def read_cached(cache: Path, cid: str) -> dict | None:
    """The metadata of a cached clip whose video is there, else ``None``."""
    try:
        info = os.stat(video_path(cache, cid), follow_symlinks=False)
        meta = json.loads((cache / f"{cid}{META}").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not S_ISREG(info.st_mode) or not isinstance(meta, dict):
        return None
    return {**meta, "size_bytes": info.st_size}


def open_cached(cache: Path, cid: str):
    """The cached clip opened for reading (no link followed) and its status, or
    ``None``."""
    try:
        fd = os.open(video_path(cache, cid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    info = os.fstat(fd)
    if not S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), info


def _entries(cache: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(cache) as entries:
            return [e for e in entries if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def remove_made_from(cache: Path, stream: str, recording: str) -> list[str]:
    """Remove the cached clips of ``stream`` made from the segment named ``recording``
    (their metadata's ``sources``); returns their ids."""
    removed = []
    for entry in _entries(cache):
        cid, ext = os.path.splitext(entry.name)
        if entry.name.startswith(".") or ext != META:
            continue
        try:
            meta = json.loads(Path(entry.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("stream") != stream:
            continue
        sources = meta.get("sources")
        if isinstance(sources, list) and any(
            isinstance(source, list) and source[:1] == [recording] for source in sources
        ):
            # The video first: without it the clip is no longer served (read_cached).
            for path in (video_path(cache, cid), cache / f"{cid}{META}"):
                path.unlink(missing_ok=True)
            removed.append(cid)
    return removed


def remove_temps(cache: Path, before: float) -> int:
    """Delete temp files last changed before ``before`` (wall clock): what a stopped
    or crashed process left. Newer ones may be another worker's clip being made."""
    removed = 0
    for entry in _entries(cache):
        if entry.name.startswith(".") and entry.name.endswith(TEMP):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def prune(cache: Path, cap_bytes: int, expire_before: float | None, keep: frozenset[str]) -> list[str]:
    """Remove clips of ranges that ended before ``expire_before`` (retention), then the
    oldest clips (by mtime) until the rest fit in ``cap_bytes``, but never the newest
    one nor those in ``keep`` (jobs of this process), and half clips (a video or its
    metadata alone). Returns the ids removed."""
    videos, metas = {}, {}
    for entry in _entries(cache):
        if entry.name.startswith("."):
            continue
        cid, ext = os.path.splitext(entry.name)
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if ext == VIDEO:
            videos[cid] = info
        elif ext == META:
            metas[cid] = info
    # Half a clip (a stop between the two renames of publish()), a minute old: not
    # another process's clip being published right now.
    settled = time.time() - 60
    halves = [(cid, info) for cid, info in metas.items() if cid not in videos]
    halves += [(cid, info) for cid, info in videos.items() if cid not in metas]
    doomed = [cid for cid, info in halves if cid not in keep and info.st_mtime < settled]
    if expire_before is not None:
        for cid in videos:
            meta = read_cached(cache, cid)
            end = meta.get("end") if meta else None
            if cid not in keep and isinstance(end, (int, float)) and end < expire_before:
                doomed.append(cid)
    gone = set(doomed)
    left = sorted((info.st_mtime, cid) for cid, info in videos.items()
                  if cid not in gone and cid in metas)
    total = sum(videos[cid].st_size for _, cid in left)
    for _, cid in left[:-1]:  # the newest stays, whatever its size: it was just made
        if total <= cap_bytes:
            break
        if cid in keep:
            continue
        total -= videos[cid].st_size
        doomed.append(cid)
    for cid in doomed:
        for path in (video_path(cache, cid), cache / f"{cid}{META}"):
            path.unlink(missing_ok=True)
    return doomed
