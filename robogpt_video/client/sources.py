"""Frame sources for the publisher command: a camera, a video file or URL, or a test pattern."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .errors import ConfigurationError, SourceError


def synthetic_pattern(width: int = 640, height: int = 480, fps: float = 30) -> Iterator[np.ndarray]:
    """An endless moving pattern (colour bars, a sweeping box, a frame counter) at ``fps``."""
    if width < 16 or height < 16:
        raise ConfigurationError("test pattern needs at least 16x16 pixels")
    bars = np.zeros((height, width, 3), np.uint8)
    colours = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0),
               (255, 0, 255), (0, 0, 255), (255, 0, 0), (0, 0, 0)]  # BGR
    for i, colour in enumerate(colours):
        bars[:, i * width // 8 : (i + 1) * width // 8] = colour
    box = max(8, min(width, height) // 6)
    period = 1.0 / fps
    due = time.monotonic()
    for n in _count():
        frame = bars.copy()
        left = (n * 7) % (width - box)
        top = (n * 3) % (height - box)
        frame[top : top + box, left : left + box] = (40, 40, 40)
        _label(frame, f"robogpt-video test {n}")
        yield frame
        due += period
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            due = time.monotonic()  # fell behind: don't burst to catch up


def _count() -> Iterator[int]:
    n = 0
    while True:
        yield n
        n += 1


def _label(frame: np.ndarray, text: str) -> None:
    try:
        import cv2
    except ImportError:  # the pattern still moves without its caption
        return
    frame[-32:] = 0  # a dark band so the caption reads on every bar
    cv2.putText(frame, text, (10, frame.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.6, (255, 255, 255), 2, cv2.LINE_AA)


def capture(source: str | int, loop: bool = True) -> Iterator[np.ndarray]:
    """Frames from an OpenCV source: a camera index, a video file, or a stream URL.

    A file is played at its own frame rate and, with ``loop``, from the start again.
    """
    try:
        import cv2
    except ImportError:
        raise SourceError("cameras and files need OpenCV: pip install 'robogpt-video[client]'") from None
    is_camera = isinstance(source, int)
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {source}" if is_camera else repr(source)
        raise SourceError(f"cannot open {what} (no such device or file?); try --camera test")
    rate = 0.0 if is_camera else (cap.get(cv2.CAP_PROP_FPS) or 0.0)
    period = 1.0 / rate if 0 < rate < 1000 else 0.0
    due = time.monotonic()
    try:
        frames = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                if is_camera:
                    raise SourceError(f"camera {source} stopped delivering frames")
                if not loop or frames == 0:
                    return
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            frames += 1
            yield frame
            if period:  # a camera paces itself; a file is read as fast as the disk allows
                due += period
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    due = time.monotonic()
    finally:
        cap.release()


def open_source(spec: str, fps: float = 30, width: int = 640, height: int = 480) -> Iterator[np.ndarray]:
    """``test`` (a synthetic pattern), a camera index such as ``0``, or a file path / URL."""
    spec = str(spec).strip()
    if spec == "test":
        return synthetic_pattern(width, height, fps)
    if spec.isdigit():
        return capture(int(spec))
    return capture(spec)
