"""Startup repair: sidecars left ``recording`` by a crash, and videos without one.

The facts come from the file itself (frames and duration read back with PyAV), so a
repaired sidecar never claims more than the file holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av

from ..errors import NotFound
from .segment import sidecar_dict
from .store import RecordingFile, RecordingStore, fd_path, parse_name

log = logging.getLogger(__name__)

_CODECS = {"mjpeg": "mjpeg", "mpeg4": "mp4v", "h264": "h264"}


@dataclass(slots=True)
class Probe:
    """What a video file really holds."""

    frames: int
    duration: float  # seconds, first frame to the end of the last one
    width: int | None
    height: int | None
    codec: str | None


def probe(path: Path) -> Probe:
    """Count the packets of ``path`` and measure its duration (no decoding)."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError):  # killed before the first fragment: nothing readable
        return Probe(0, 0.0, None, None, None)
    with container:
        if not container.streams.video:
            return Probe(0, 0.0, None, None, None)
        stream = container.streams.video[0]
        frames, first, end = 0, None, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                frames += 1
                first = packet.pts if first is None else min(first, packet.pts)
                end = max(end, packet.pts + (packet.duration or 0))
        except av.FFmpegError:  # a torn last fragment: keep what came before it
            pass
        duration = float((end - (first or 0)) * stream.time_base) if frames else 0.0
        context = stream.codec_context
        codec = _CODECS.get(context.name, context.name)
        return Probe(frames, duration, context.width or None, context.height or None, codec)


def repair(store: RecordingStore, recording: RecordingFile, old: dict | None) -> dict:
    """A ``recovered`` sidecar for ``recording``, keeping what ``old`` knew.

    The file is read as the store opens it (``NotFound`` if it is a link or gone).
    """
    old = old or {}
    with store.open(recording) as video:
        facts = probe(Path(fd_path(video)))
        size = os.fstat(video.fileno()).st_size
    start = old.get("start_time")
    start_ts = (
        _parse_iso(start) if isinstance(start, str) else recording.start.timestamp()
    )
    meta = sidecar_dict(
        stream=recording.stream,
        path=old.get("recording_path") or recording.path,
        start_ts=start_ts,
        duration=facts.duration,
        frames=facts.frames,
        target_fps=old.get("target_fps") or 0,
        codec=facts.codec or old.get("codec"),
        status="recovered",
        width=facts.width or old.get("width"),
        height=facts.height or old.get("height"),
        size=size,
        dropped=old.get("frames_dropped") or 0,
    )
    if old.get("fence") is not None:  # the cluster's fencing token (docs/cluster.md)
        meta["fence"] = old["fence"]
    return meta


def sidecar_temp(video: Path) -> Path:
    """The temp file :meth:`RecordingStore.write_sidecar` writes before its rename."""
    sidecar = video.with_suffix(".json")
    return sidecar.with_name(f".{sidecar.name}.tmp")


def remove_file(path: Path) -> None:
    """Delete ``path`` if it is there; a failure is logged, not raised."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".json.tmp"


def remove_temp_files(
    store: RecordingStore, skip: Callable[[Path], bool], before: float = float("inf")
) -> int:
    """Delete sidecar temp files a stop left behind mid-write; returns how many.

    Only ``.<segment>.json.tmp`` in the stream folders last changed before ``before``
    (wall clock: another process recording here may be writing a newer one), never
    through a link below the root, and none of a segment ``skip`` names.
    """
    try:
        root = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return 0
    removed = 0
    try:
        with os.scandir(root) as entries:
            folders = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        for folder in folders:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
            except OSError:
                continue
            try:
                removed += _remove_temps(fd, store.root / folder, skip, before)
            finally:
                os.close(fd)
    finally:
        os.close(root)
    return removed


def _remove_temps(fd: int, folder: Path, skip: Callable[[Path], bool], before: float) -> int:
    with os.scandir(fd) as entries:
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    removed = 0
    for name in names:
        if not (name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)):
            continue
        video = folder / (name[len(_TEMP_PREFIX) : -len(_TEMP_SUFFIX)] + ".mp4")
        if parse_name(video.name) is None or skip(video):
            continue
        try:
            if os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime >= before:
                continue
            os.unlink(name, dir_fd=fd)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def recover(
    store: RecordingStore,
    skip: Callable[[Path], bool] = lambda p: False,
    before: float = float("inf"),
) -> int:
    """Repair every sidecar left ``recording`` and add missing ones; returns how many.

    Also removes what an interrupted write leaves: sidecar temp files, and videos of 0
    bytes without a sidecar (reserved, then the disk refused their header), if last
    changed before ``before`` (wall clock): another process recording into the same
    folders (``serve --workers``) reserves its paths as empty files.
    """
    temps = remove_temp_files(store, skip, before)
    if temps:
        log.info("recovery: %d unfinished sidecar temp file(s) removed", temps)
    repaired = empty = 0
    for recording in store.list():
        if skip(recording.path):
            continue
        old = store.read_sidecar(recording)
        if old is not None and old.get("status") != "recording":
            continue
        info = store.stat(recording)  # None: a link, or gone
        if old is None and info is not None:
            if info.st_mtime >= before:  # another process's new segment, before its sidecar
                continue
            if info.st_size == 0:  # reserved, never written
                store.delete(recording)
                empty += 1
                continue
        try:
            store.write_sidecar(recording.path, repair(store, recording, old))
        except (NotFound, OSError) as exc:
            remove_file(sidecar_temp(recording.path))
            log.error("cannot repair the sidecar of %s: %s", recording.path, exc)
            continue
        repaired += 1
        log.warning("recovered %s after an unclean stop", recording.path)
    if empty:
        log.info("recovery: %d empty video file(s) without a sidecar removed", empty)
    if repaired:
        log.info("recovery: %d recording(s) repaired", repaired)
    return repaired

