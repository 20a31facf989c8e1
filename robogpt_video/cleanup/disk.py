"""The file-system side of cleanup: listing, free space, deleting. Blocking; run in a thread."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable
from datetime import datetime, timezone
from pathlib import Path

from ..recording.store import RecordingFile, RecordingStore
from ..streams import iso
from .policy import Segment, segment_end

log = logging.getLogger("robogpt_video.cleanup")


def normalize(path: Path | str) -> str:
    """An absolute, lexically normalised path, for comparing paths without touching the disk."""
    return os.path.abspath(path)


def human(size: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    """Bytes available to this user on the file system holding ``path`` (or its parent)."""
    return usage(path)[0]


def usage(path: Path) -> tuple[int, int]:
    """``(free, total)`` bytes of the file system holding ``path`` (or its nearest
    existing parent); free is what this user may use (``df``'s Avail)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


class SidecarCache:
    """Sidecars read on earlier scans, re-read only when their mtime changes."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[int, int, dict | None]] = {}

    def read(
        self, store: RecordingStore, recording: RecordingFile, seen: dict
    ) -> tuple[dict | None, int]:
        """``(metadata, size)`` of a segment's sidecar; ``(None, 0)`` if it has none (a
        link is none)."""
        stat = store.stat(recording, sidecar=True)
        if stat is None:
            return None, 0
        cached = self._entries.get(recording.sidecar)
        if cached is None or cached[0] != stat.st_mtime_ns:
            cached = (stat.st_mtime_ns, stat.st_size, store.read_sidecar(recording))
        seen[recording.sidecar] = cached
        return cached[2], cached[1]

    def keep_only(self, seen: dict) -> None:
        """Forget sidecars that were not seen on the last scan."""
        self._entries = seen


def scan(store: RecordingStore, cache: SidecarCache, open_paths: Collection[str]) -> list[Segment]:
    """Every segment on disk with its size, end and status, oldest first."""
    segments: list[Segment] = []
    seen: dict = {}
    for recording in store.list():
        stat = store.stat(recording)
        if stat is None:  # deleted (or replaced) since the directory was read
            continue
        sidecar, sidecar_size = cache.read(store, recording, seen)
        start = recording.start.timestamp()
        segments.append(
            Segment(
                stream=recording.stream,
                path=recording.path,
                start=start,
                end=segment_end(sidecar, stat.st_mtime, start),
                size=stat.st_size + sidecar_size,
                mtime=stat.st_mtime,
                status=sidecar.get("status") if sidecar else None,
                open=normalize(recording.path) in open_paths,
            )
        )
    cache.keep_only(seen)
    return segments


def _recording(segment: Segment) -> RecordingFile:
    start = datetime.fromtimestamp(segment.start, timezone.utc)
    return RecordingFile(segment.stream, segment.path, start)


def describe(segment: Segment, reason: str) -> dict:
    """One removal as the API reports it."""
    return {
        "stream": segment.stream,
        "file": segment.path.name,
        "size_bytes": segment.size,
        "start_time": iso(segment.start),
        "end_time": iso(segment.end),
        "status": segment.status,
        "reason": reason,
    }


def delete_segments(store: RecordingStore, chosen: Iterable[tuple[Segment, str]]) -> list[dict]:
    """Delete ``(segment, reason)`` pairs (video + sidecar), logging each with its size.

    A file whose mtime changed since the scan is being written after all: it is kept.
    """
    removed = []
    for segment, reason in chosen:
        stat = store.stat(_recording(segment))
        if stat is None:
            continue
        if stat.st_mtime != segment.mtime:
            log.warning("kept %s: it changed since it was listed", segment.path.name)
            continue
        freed = store.delete(_recording(segment))
        log.info(
            "deleted recording %s/%s (%s, ended %s): %s",
            segment.stream,
            segment.path.name,
            human(freed),
            iso(segment.end),
            reason,
        )
        removed.append({**describe(segment, reason), "size_bytes": freed})
    return removed


def prune_dirs(store: RecordingStore, live: Collection[str]) -> list[str]:
    """Remove empty stream folders, except those of live streams (the recorder may be
    about to create a file there); returns the names removed."""
    removed = store.remove_empty_dirs(skip=lambda folder: folder.name in live)
    for folder in removed:
        log.info("removed empty folder %s", folder)
    return [folder.name for folder in removed]


def dirs_left_empty(
    store: RecordingStore, doomed: Iterable[Segment], live: Collection[str]
) -> list[str]:
    """Folders that would be empty once ``doomed`` are gone (for a dry run)."""
    gone = {normalize(p) for s in doomed for p in (s.path, _recording(s).sidecar)}
    names = []
    for name in store.stream_folders():  # links to folders are not among them
        if name in live:
            continue
        entries = store.folder_entries(name)
        if entries is None:
            continue
        if all(normalize(store.root / name / entry) in gone for entry in entries):
            names.append(name)
    return names
