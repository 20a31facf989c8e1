"""Incremental parser for ``multipart/x-mixed-replace`` bodies (what ``ffmpeg -f mpjpeg`` sends).

Pure and synchronous: feed it bytes as they arrive, get whole part bodies back.
Each part is delimited by its ``Content-Length`` header when it has one (any case:
ffmpeg writes ``Content-length``), else by searching for the next boundary line.
The boundary is read from the first line of the body (``--<boundary>``), because
ffmpeg sends no Content-Type header at all; a header's boundary is only a hint.
"""

from __future__ import annotations

from .errors import ApiError, FrameTooLarge, InvalidFrame

MAX_BOUNDARY = 200  # RFC 2046 allows 70 characters; be lenient, but bounded
MAX_HEADERS = 16 * 1024  # all header lines of one part


class MultipartError(InvalidFrame):
    """The body is not a well-formed ``multipart/x-mixed-replace`` stream."""

    code = "bad_multipart"


def boundary_from_content_type(content_type: str) -> bytes | None:
    """The ``boundary=`` parameter of a Content-Type header, without quotes, if any."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"').encode("latin-1")
    return None


def looks_like_multipart(head: bytes) -> bool:
    """Whether a body's first bytes start a multipart stream (``--boundary``)."""
    return head.lstrip(b"\r\n").startswith(b"--")


class MpjpegParser:
    """Turns a stream of byte chunks into part bodies; raises on the first malformed part."""

    def __init__(self, max_part_bytes: int, boundary: bytes | None = None):
        self.max_part_bytes = max_part_bytes
        self.boundary = boundary
        self.parts = 0  # complete parts returned so far
        self.finished = False  # the closing ``--boundary--`` line was seen
        self._buf = bytearray()
        self._state = "start"  # start -> headers -> body -> delimiter -> headers ...
        self._length: int | None = None
        self._pending: ApiError | None = None
        self._scanned = 0  # bytes of a length-less part already searched for the boundary

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the part bodies they completed (possibly none)."""
        self._raise_pending()
        if self.finished:
            return []
        self._buf += data
        out: list[bytes] = []
        try:
            while not self.finished:
                step = getattr(self, f"_{self._state}")
                if not step(out):
                    break
        except ApiError as exc:
            if not out:
                raise
            # Hand out the good parts first; the error comes with the next call.
            self._pending = exc
        return out

    def _raise_pending(self) -> None:
        if self._pending is not None:
            exc, self._pending = self._pending, None
            self.finished = True
            raise exc

    def close(self) -> None:
        """The body ended: raise if it stopped inside a part (or on a pending error)."""
        self._raise_pending()
        if self.finished:
            return
        rest = bytes(self._buf).strip(b"\r\n")
        if self._state in ("body", "headers") and (rest or self._state == "body"):
            raise MultipartError(
                f"body ended inside part {self.parts + 1} (truncated upload)",
                code="truncated_upload",
            )

    # -- states: each consumes what it can and says whether to go on ----------------------

    def _start(self, out: list[bytes]) -> bool:
        while self._buf.startswith(b"\r\n"):  # tolerate a preamble of blank lines
            del self._buf[:2]
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_BOUNDARY + 2 or (
                len(self._buf) >= 2 and not self._buf.startswith(b"--")
            ):
                raise MultipartError("body does not start with a '--boundary' line")
            return False
        line = bytes(self._buf[:end]).rstrip(b" \t")
        if not line.startswith(b"--") or len(line) < 3 or len(line) > MAX_BOUNDARY + 2:
            raise MultipartError("body does not start with a '--boundary' line")
        found = line[2:]
        if self.boundary is not None and found not in (self.boundary, b"--" + self.boundary):
            raise MultipartError(
                f"first boundary {found!r} differs from the Content-Type's {self.boundary!r}"
            )
        self.boundary = found
        del self._buf[: end + 2]
        self._state = "headers"
        return True

    def _headers(self, out: list[bytes]) -> bool:
        if self._buf.startswith(b"\r\n"):  # a part with no headers at all
            end = 0
        else:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADERS:
                    raise MultipartError(f"part {self.parts + 1} headers exceed {MAX_HEADERS} bytes")
                return False
            if end > MAX_HEADERS:
                raise MultipartError(f"part {self.parts + 1} headers exceed {MAX_HEADERS} bytes")
        self._length = self._content_length(bytes(self._buf[:end]))
        del self._buf[: end + (2 if end == 0 else 4)]
        self._state = "body"
        return True

    def _content_length(self, block: bytes) -> int | None:
        for line in block.split(b"\r\n"):
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise MultipartError(
                        f"part {self.parts + 1} has a bad Content-Length {value.strip()!r}"
                    ) from None
                if length < 0:
                    raise MultipartError(f"part {self.parts + 1} has a negative Content-Length")
                if length > self.max_part_bytes:
                    raise self._too_large()
                return length
        return None

    def _body(self, out: list[bytes]) -> bool:
        if self._length is not None:
            if len(self._buf) < self._length:
                return False
            body = bytes(self._buf[: self._length])
            del self._buf[: self._length]
        else:
            mark = b"\r\n--" + self.boundary
            end = self._buf.find(mark, self._scanned)
            if end < 0:
                if len(self._buf) > self.max_part_bytes + len(mark):
                    raise self._too_large()
                # Next time search only the new bytes (and a mark's length before them).
                self._scanned = max(0, len(self._buf) - len(mark) + 1)
                return False
            self._scanned = 0
            if end > self.max_part_bytes:
                raise self._too_large()
            body = bytes(self._buf[:end])
            del self._buf[:end]
        self.parts += 1
        out.append(body)
        self._state = "delimiter"
        return True

    def _delimiter(self, out: list[bytes]) -> bool:
        # After a body: optional CRLFs, then "--boundary" and either CRLF or "--" (the end).
        while self._buf.startswith(b"\r\n"):
            del self._buf[:2]
        if self._buf == b"\r":  # half a line break: wait for the rest
            return False
        marker = b"--" + self.boundary
        need = len(marker) + 2
        if len(self._buf) < need:
            if not marker.startswith(bytes(self._buf[: len(marker)])):
                raise self._no_boundary()
            return False
        if not self._buf.startswith(marker):
            raise self._no_boundary()
        tail = bytes(self._buf[len(marker) : need])
        if tail == b"--":
            self.finished = True
            self._buf.clear()
            return False
        end = self._buf.find(b"\r\n", len(marker))
        if end < 0:
            if len(self._buf) > MAX_BOUNDARY + 4:
                raise self._no_boundary()
            return False
        if self._buf[len(marker) : end].strip(b" \t"):
            raise self._no_boundary()
        del self._buf[: end + 2]
        self._state = "headers"
        return True

    def _too_large(self) -> FrameTooLarge:
        return FrameTooLarge(
            f"part {self.parts + 1} exceeds server.max_frame_size_mb "
            f"({self.max_part_bytes / 1048576:g} MB)"
        )

    def _no_boundary(self) -> MultipartError:
        return MultipartError(
            f"part {self.parts} is not followed by the boundary '--{self.boundary.decode('latin-1')}'"
            " (wrong Content-Length?)"
        )
