"""The on-disk layout of recordings; the only module that builds or parses their paths.

    <root>/<stream>/<stream>_YYYYMMDD_HHMMSS.mp4     (UTC start time)
    <root>/<stream>/<stream>_YYYYMMDD_HHMMSS.json    (sidecar metadata)

A second segment starting within the same second gets ``-1``, ``-2``… after the time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import NotFound
from ..streams import NAME_RE, validate_stream_name

VIDEO_SUFFIX = ".mp4"
SIDECAR_SUFFIX = ".json"
STAMP = "%Y%m%d_%H%M%S"
_FILE_RE = re.compile(
    rf"(?P<stream>{NAME_RE.pattern})_(?P<stamp>\d{{8}}_\d{{6}})(?:-(?P<n>\d+))?\.mp4"
)


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """One recording segment found on disk."""

    stream: str
    path: Path
    start: datetime  # UTC, from the file name

    @property
    def sidecar(self) -> Path:
        """Path of its metadata file."""
        return self.path.with_suffix(SIDECAR_SUFFIX)

    @property
    def name(self) -> str:
        return self.path.name


def parse_name(filename: str) -> tuple[str, datetime] | None:
    """``(stream, start)`` of a segment file name, or ``None`` if it is not one."""
    match = _FILE_RE.fullmatch(filename)
    if match is None:
        return None
    start = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=timezone.utc)
    return match["stream"], start


class RecordingStore:
    """Recordings under one root directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def stream_dir(self, stream: str) -> Path:
        """The folder of one stream's recordings (name validated first)."""
        return self.root / validate_stream_name(stream)

    def new_segment_path(self, stream: str, start: datetime) -> Path:
        """A free path for a segment of ``stream`` starting at ``start`` (UTC)."""
        folder = self.stream_dir(stream)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{stream}_{start.astimezone(timezone.utc).strftime(STAMP)}"
        path = folder / f"{stem}{VIDEO_SUFFIX}"
        n = 0
        while path.exists() or path.with_suffix(SIDECAR_SUFFIX).exists():
            n += 1
            path = folder / f"{stem}-{n}{VIDEO_SUFFIX}"
        return path

    def resolve(self, stream: str, filename: str) -> RecordingFile:
        """The recording ``stream/filename`` (video or sidecar name); 404 if absent or foreign."""
        validate_stream_name(stream)
        video_name = filename[: -len(SIDECAR_SUFFIX)] + VIDEO_SUFFIX if filename.endswith(
            SIDECAR_SUFFIX
        ) else filename
        parsed = parse_name(video_name)
        if parsed is None or parsed[0] != stream:
            raise NotFound(f"no recording '{filename}' for stream '{stream}'")
        path = self.root / stream / video_name
        if not path.is_file():
            raise NotFound(f"no recording '{filename}' for stream '{stream}'")
        return RecordingFile(stream, path, parsed[1])

    def list(self, stream: str | None = None) -> list[RecordingFile]:
        """Every segment on disk (of one stream if given), oldest first."""
        if stream is not None:
            folders = [self.stream_dir(stream)]
        else:
            try:
                folders = [p for p in self.root.iterdir() if NAME_RE.fullmatch(p.name)]
            except FileNotFoundError:
                return []
        found: list[RecordingFile] = []
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                parsed = parse_name(entry.name)
                if parsed is not None and parsed[0] == folder.name and entry.is_file():
                    found.append(RecordingFile(parsed[0], Path(entry.path), parsed[1]))
        found.sort(key=lambda r: (r.start, r.name))
        return found

    def orphan_sidecars(self) -> list[Path]:
        """Sidecars whose video file is gone."""
        return [
            p
            for p in self.root.glob(f"*/*{SIDECAR_SUFFIX}")
            if parse_name(p.with_suffix(VIDEO_SUFFIX).name)
            and not p.with_suffix(VIDEO_SUFFIX).exists()
        ]

    @staticmethod
    def read_sidecar(recording: RecordingFile) -> dict | None:
        """The sidecar's metadata, or ``None`` if missing or unreadable."""
        try:
            data = json.loads(recording.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def write_sidecar(video: Path, data: dict) -> None:
        """Write a sidecar atomically: temp file, fsync, rename, fsync the folder."""
        target = video.with_suffix(SIDECAR_SUFFIX)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, recording: RecordingFile) -> int:
        """Remove a segment and its sidecar; returns the bytes freed."""
        freed = 0
        for path in (recording.path, recording.sidecar):
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    def remove_empty_dirs(self, skip: Callable[[Path], bool] | None = None) -> list[Path]:
        """Delete stream folders that hold nothing (and that ``skip`` does not spare)."""
        removed = []
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return removed
        for folder in folders:
            if skip is not None and skip(folder):
                continue
            try:
                folder.rmdir()  # only succeeds when empty
                removed.append(folder)
            except OSError:
                pass
        return removed
