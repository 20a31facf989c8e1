"""Benchmark frames: real JPEGs stamped with a send time and a sequence number.

The stamp lives in a JPEG COM segment right after SOI, so every decoder still reads
the image, and a viewer can read the stamp without decoding a pixel. A frame is
sent as three pieces (SOI+COM, the rest of the JPEG, nothing copied) so stamping
costs ≈1 µs whatever the frame size.
"""

from __future__ import annotations

import struct

import numpy as np
import simplejpeg

MAGIC = b"RGVB"
_PAYLOAD = struct.Struct("<4sQd")  # magic, sequence, send time (time.monotonic())
STAMP_SIZE = 4 + _PAYLOAD.size  # COM marker (2) + length (2) + payload
SOI = b"\xff\xd8"
COM = b"\xff\xfe"

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


def camera_jpeg(width: int, height: int, quality: int = 80, seed: int = 1) -> bytes:
    """A camera-like JPEG: gradients, shapes and sensor noise (≈45 KB at 640x480)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 128 + 90 * np.sin(x / 37.0) * np.cos(y / 23.0)
    img[..., 1] = 255 * x / width
    img[..., 2] = 255 * y / height
    for _ in range(12):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, height // 4)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.integers(0, 255, 3)
    img += rng.normal(0, 3.0, img.shape)
    pixels = np.clip(img, 0, 255).astype(np.uint8)
    return simplejpeg.encode_jpeg(pixels, quality=quality)


def stamp(seq: int, sent: float) -> bytes:
    """SOI followed by a COM segment holding ``seq`` and ``sent``: the head of a frame."""
    return SOI + COM + struct.pack(">H", _PAYLOAD.size + 2) + _PAYLOAD.pack(MAGIC, seq, sent)


def stamped(jpeg: bytes, seq: int, sent: float) -> tuple[bytes, memoryview]:
    """A stamped frame as (head, tail): ``head + tail`` is one valid JPEG."""
    return stamp(seq, sent), memoryview(jpeg)[2:]


def read_stamp(jpeg: bytes | bytearray | memoryview) -> tuple[int, float] | None:
    """The (sequence, send time) of a stamped JPEG, or ``None`` if it carries none."""
    if len(jpeg) < STAMP_SIZE + 2 or bytes(jpeg[2:4]) != COM:
        return None
    magic, seq, sent = _PAYLOAD.unpack_from(jpeg, 6)
    if magic != MAGIC:
        return None
    return seq, sent


def stamped_size(jpeg: bytes) -> int:
    """The byte size of ``jpeg`` once stamped."""
    return len(jpeg) + STAMP_SIZE
