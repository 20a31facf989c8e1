"""The on-disk layout of recordings; the only module that builds or parses their paths.

    <root>/<stream>/<stream>_YYYYMMDD_HHMMSS.mp4     (UTC start time)
    <root>/<stream>/<stream>_YYYYMMDD_HHMMSS.json    (sidecar metadata)

A second segment starting within the same second gets ``-1``, ``-2``… after the time.

Links below the root are never followed: a stream folder, video or sidecar that is a
symbolic link (or anything but a plain folder or file) is not listed, read, counted or
deleted. Every read goes through descriptors: the root (which may itself be a link, the
operator's choice), then the stream folder opened with ``O_NOFOLLOW``, then the file
opened with ``O_NOFOLLOW`` relative to it, and its type is checked on the open file.
A hard link is a name inside the root like any other and is treated as a file.
"""

from __future__ import annotations

import errno
import io
import json
import itertools
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG

from ..errors import NotFound
from ..streams import NAME_RE, validate_stream_name

VIDEO_SUFFIX = ".mp4"
SIDECAR_SUFFIX = ".json"
STAMP = "%Y%m%d_%H%M%S"
_FILE_RE = re.compile(
    rf"(?P<stream>{NAME_RE.pattern})_(?P<stamp>\d{{8}}_\d{{6}})(?:-(?P<n>\d+))?\.mp4"
)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO named like a recording returns at once (and is refused
# as not a file) instead of waiting for a writer; it changes nothing for a plain file.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What opening a name that is missing, a link (O_NOFOLLOW), not a folder (O_DIRECTORY)
# or a socket gives: there is no such recording.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO})


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


def sidecar_time(value) -> float | None:
    """A sidecar's ``start_time``/``end_time`` (ISO 8601) as Unix time; None if it is
    not a valid time (a sidecar written by hand, or damaged)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def fd_path(file: io.IOBase) -> str:
    """A path that opens the very file ``file`` has open, whatever its name points to by
    then (Linux ``/proc/self/fd``): for code that only opens by path (Starlette, FFmpeg).
    Valid while ``file`` is open."""
    return f"/proc/self/fd/{file.fileno()}"


def _open_at(dir_fd: int | None, name: str, flags: int) -> int | None:
    """``name`` opened with ``flags`` (relative to the folder ``dir_fd`` if given), or
    ``None`` if absent."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise


def _order(recording: RecordingFile) -> tuple:
    # Within one second: x.mp4, then x-1.mp4, x-2.mp4 … x-10.mp4 (shorter names first).
    return recording.start, recording.stream, len(recording.name), recording.name


class RecordingStore:
    """Recordings under one root directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def stream_dir(self, stream: str) -> Path:
        """The folder of one stream's recordings (name validated first)."""
        return self.root / validate_stream_name(stream)

    def new_segment_path(self, stream: str, start: datetime) -> Path:
        """A path for a new segment of ``stream`` starting at ``start`` (UTC), created
        empty and so reserved: another process recording the same stream into this
        folder (``serve --workers``) in the same second gets the next name, never this
        file (the check and the creation are one ``O_EXCL`` open)."""
        folder = self.stream_dir(stream)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{stream}_{start.astimezone(timezone.utc).strftime(STAMP)}"
        for n in itertools.count():
            path = folder / (f"{stem}{VIDEO_SUFFIX}" if n == 0 else f"{stem}-{n}{VIDEO_SUFFIX}")
            if path.with_suffix(SIDECAR_SUFFIX).exists():
                continue
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            except FileExistsError:
                continue
            return path
        raise AssertionError("unreachable")  # itertools.count() never ends

    @contextmanager
    def _root_fd(self) -> Iterator[int | None]:
        # The root itself is opened by path, following links: where it lives is the
        # operator's choice. ``None`` when there is no root folder (yet).
        fd = _open_at(None, os.fspath(self.root), _DIR)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def _folder_fd(self, stream: str) -> Iterator[int | None]:
        """The folder ``<root>/<stream>`` opened without following a link, or ``None``."""
        validate_stream_name(stream)
        with self._root_fd() as root:
            fd = None if root is None else _open_at(root, stream, _DIR | os.O_NOFOLLOW)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _files(dir_fd: int) -> list[os.DirEntry]:
        """The plain files in a folder (links and everything else skipped)."""
        with os.scandir(dir_fd) as entries:
            return [e for e in entries if e.is_file(follow_symlinks=False)]

    def folders(self) -> list[str]:
        """Names of the folders directly under the root, sorted; links are skipped."""
        with self._root_fd() as root:
            if root is None:
                return []
            with os.scandir(root) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def folder_entries(self, name: str) -> list[str] | None:
        """Names in the root's folder ``name`` (opened without following a link), or
        ``None`` if it is not a folder of the root."""
        if os.sep in name or name in (".", ".."):
            return None
        with self._root_fd() as root:
            fd = None if root is None else _open_at(root, name, _DIR | os.O_NOFOLLOW)
        if fd is None:
            return None
        try:
            with os.scandir(fd) as entries:
                return [e.name for e in entries]
        finally:
            os.close(fd)

    def stat(self, recording: RecordingFile, sidecar: bool = False) -> os.stat_result | None:
        """The video's (or sidecar's) own status, not a link's target's; ``None`` if it
        is not a plain file in a plain stream folder."""
        name = recording.sidecar.name if sidecar else recording.name
        with self._folder_fd(recording.stream) as folder:
            if folder is None:
                return None
            try:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return None
        return info if S_ISREG(info.st_mode) else None

    def open(self, recording: RecordingFile, sidecar: bool = False) -> io.BufferedReader:
        """The video (or its sidecar) opened for reading; ``NotFound`` unless the open
        file is a plain file reached without following any link below the root."""
        name = recording.sidecar.name if sidecar else recording.name
        with self._folder_fd(recording.stream) as folder:
            fd = None if folder is None else _open_at(folder, name, _FILE)
        if fd is not None:
            if S_ISREG(os.fstat(fd).st_mode):
                return os.fdopen(fd, "rb")
            os.close(fd)
        if sidecar:
            raise NotFound(f"recording '{recording.name}' has no sidecar")
        raise NotFound(f"no recording '{recording.name}' for stream '{recording.stream}'")

    def name(self, stream: str, filename: str) -> RecordingFile:
        """The recording ``stream/filename`` (video or sidecar name) would be, whether or
        not it exists here; 404 if the name cannot be one of ``stream``'s recordings."""
        validate_stream_name(stream)
        video_name = filename[: -len(SIDECAR_SUFFIX)] + VIDEO_SUFFIX if filename.endswith(
            SIDECAR_SUFFIX
        ) else filename
        parsed = parse_name(video_name)
        if parsed is None or parsed[0] != stream:
            raise NotFound(f"no recording '{filename}' for stream '{stream}'")
        return RecordingFile(stream, self.root / stream / video_name, parsed[1])

    def resolve(self, stream: str, filename: str) -> RecordingFile:
        """The recording ``stream/filename`` (video or sidecar name); 404 if absent or foreign."""
        recording = self.name(stream, filename)
        if self.stat(recording) is None:
            raise NotFound(f"no recording '{filename}' for stream '{stream}'")
        return recording

    def list(self, stream: str | None = None) -> list[RecordingFile]:
        """Every segment on disk (of one stream if given), oldest first."""
        if stream is not None:
            names = [validate_stream_name(stream)]
        else:
            names = self.stream_folders()
        found: list[RecordingFile] = []
        for name in names:
            with self._folder_fd(name) as folder:
                entries = self._files(folder) if folder is not None else []
            for entry in entries:
                parsed = parse_name(entry.name)
                if parsed is not None and parsed[0] == name:
                    found.append(RecordingFile(name, self.root / name / entry.name, parsed[1]))
        found.sort(key=_order)
        return found

    def read_sidecar(self, recording: RecordingFile) -> dict | None:
        """The sidecar's metadata, or ``None`` if missing, unreadable or not a plain file."""
        try:
            with self.open(recording, sidecar=True) as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except (NotFound, OSError, ValueError):
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
        """Remove a segment and its sidecar; returns the bytes freed.

        Names are removed from the stream folder opened without following a link, and
        only while they are plain files: a link there stays, and what it points to too.
        """
        freed = 0
        with self._folder_fd(recording.stream) as folder:
            if folder is None:
                return 0
            for name in (recording.name, recording.sidecar.name):
                try:
                    info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    if not S_ISREG(info.st_mode):
                        continue
                    # Replaced by a link since the line above, this removes the link
                    # (unlink never follows one), not what it points to.
                    os.unlink(name, dir_fd=folder)
                except (FileNotFoundError, IsADirectoryError):
                    continue
                freed += info.st_size
        return freed

    def stream_folders(self) -> list[str]:
        """The folders named like a stream (not the clip cache ``.clips``, nor any
        other folder an operator keeps here), sorted; links are skipped."""
        return [name for name in self.folders() if NAME_RE.fullmatch(name)]

    def remove_empty_dirs(self, skip: Callable[[Path], bool] | None = None) -> list[Path]:
        """Delete stream folders that hold nothing (and that ``skip`` does not spare);
        a link to a folder is not one of them."""
        removed = []
        for name in self.stream_folders():
            folder = self.root / name
            if skip is not None and skip(folder):
                continue
            try:
                folder.rmdir()  # only succeeds when empty; never follows a link
                removed.append(folder)
            except OSError:
                pass
        return removed
