"""Frame validation: cheap checks that a body is one whole JPEG image."""

from __future__ import annotations

from dataclasses import dataclass

import simplejpeg

from .errors import InvalidFrame

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class JpegInfo:
    """What the header tells about a JPEG."""

    width: int
    height: int


def inspect_jpeg(data: bytes | bytearray | memoryview) -> JpegInfo:
    """Return the size of a JPEG, or raise :class:`InvalidFrame` saying what is wrong.

    Checks the start-of-image and end-of-image markers (a truncated upload loses its
    EOI) and parses the header (≈1.4 µs): no pixel is decoded.
    """
    if len(data) == 0:
        raise InvalidFrame("frame is empty", code="empty_frame")
    if bytes(data[:2]) != SOI:
        raise InvalidFrame("frame is not a JPEG (no start-of-image marker)", code="not_jpeg")
    # Some encoders pad after EOI; accept a few trailing bytes.
    tail = bytes(data[-32:])
    if EOI not in tail:
        raise InvalidFrame("JPEG is truncated (no end-of-image marker)", code="truncated_jpeg")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError) as exc:
        raise InvalidFrame(f"JPEG header is unreadable: {exc}", code="corrupt_jpeg") from None
    if width <= 0 or height <= 0:
        raise InvalidFrame("JPEG has no size", code="corrupt_jpeg")
    return JpegInfo(width=width, height=height)
