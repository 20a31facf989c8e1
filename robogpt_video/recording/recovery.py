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
from .store import RecordingFile, RecordingStore, fd_path

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
    return sidecar_dict(
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


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def recover(store: RecordingStore, skip: Callable[[Path], bool] = lambda p: False) -> int:
    """Repair every sidecar left ``recording`` and add missing ones; returns how many."""
    repaired = 0
    for recording in store.list():
        if skip(recording.path):
            continue
        old = store.read_sidecar(recording)
        if old is not None and old.get("status") != "recording":
            continue
        try:
            store.write_sidecar(recording.path, repair(store, recording, old))
        except (NotFound, OSError) as exc:
            log.error("cannot repair the sidecar of %s: %s", recording.path, exc)
            continue
        repaired += 1
        log.warning("recovered %s after an unclean stop", recording.path)
    if repaired:
        log.info("recovery: %d recording(s) repaired", repaired)
    return repaired
