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
    """Turns a stream of byte chunks into part bodies; raises on the first malformed part.

    A part whose bytes all came in one chunk is handed out as a view of that chunk (no
    copy) when it is at least half of it; otherwise it is copied once. Bytes left over
    at the end of a chunk wait in a buffer that grows in place (a part fed in many small
    chunks costs linear, not quadratic, copying); a body that began in earlier chunks is
    completed with only the bytes it needs, and the rest of the chunk is read in place.
    """

    def __init__(self, max_part_bytes: int, boundary: bytes | None = None):
        self.max_part_bytes = max_part_bytes
        self.boundary = boundary
        self.parts = 0  # complete parts returned so far
        self.finished = False  # the closing ``--boundary--`` line was seen
        self._carry = bytearray()  # bytes of earlier chunks not consumed yet
        self._src: bytes | bytearray = b""  # what the states read: a chunk, or the carry
        self._pos = 0  # where in ``_src`` the states have got to
        self._state = "start"  # start -> headers -> body -> delimiter -> headers ...
        self._length: int | None = None
        self._pending: ApiError | None = None
        self._scanned = 0  # bytes of a length-less part already searched for the boundary

    def feed(self, data: bytes) -> list[bytes | bytearray | memoryview]:
        """Add bytes; return the part bodies they completed (possibly none)."""
        self._raise_pending()
        if self.finished:
            return []
        out: list[bytes | memoryview] = []
        self._src, self._pos = data, 0
        if self._carry and not self._complete_body(data, out):
            self._carry += data
            self._src = self._carry
        try:
            while not self.finished:
                if not _STATES[self._state](self, out):
                    break
        except ApiError as exc:
            if not out:
                raise
            # Hand out the good parts first; the error comes with the next call.
            self._pending = exc
        finally:
            self._keep_rest()
        return out

    def _complete_body(self, data: bytes, out: list) -> bool:
        """Finish a part whose body began in earlier chunks with the start of ``data``,
        copying only what it needs; the rest of ``data`` is then read in place."""
        if self._state != "body" or self._length is None:
            return False
        need = self._length - len(self._carry)
        if not 0 <= need <= len(data):
            return False
        body, self._carry = self._carry, bytearray()
        body += memoryview(data)[:need]
        self.parts += 1
        out.append(body)
        self._state = "delimiter"
        self._pos = need
        return True

    def _keep_rest(self) -> None:
        src, pos = self._src, self._pos
        if src is self._carry:
            del self._carry[:pos]
        elif pos < len(src):
            self._carry = bytearray(memoryview(src)[pos:])
        self._src, self._pos = b"", 0

    def _raise_pending(self) -> None:
        if self._pending is not None:
            exc, self._pending = self._pending, None
            self.finished = True
            raise exc

    @property
    def between_parts(self) -> bool:
        """Whether the body is at a part boundary: every byte so far belongs to whole parts
        and whole boundary lines (ffmpeg sends the boundary line after each frame, other
        publishers before it). A part without Content-Length counts as between parts
        too: only the next boundary line shows where it ends."""
        if self.finished:
            return False
        if self._state == "body":
            return self._length is None
        return not self._carry.strip(b"\r\n")

    def close(self) -> None:
        """The body ended: raise if it stopped inside a part (or on a pending error)."""
        self._raise_pending()
        if self.finished:
            return
        rest = bytes(self._carry).strip(b"\r\n")
        if self._state in ("body", "headers") and (rest or self._state == "body"):
            raise MultipartError(
                f"body ended inside part {self.parts + 1} (truncated upload)",
                code="truncated_upload",
            )

    # -- states: each consumes what it can and says whether to go on ----------------------

    def _skip_blank_lines(self) -> None:
        src = self._src
        while src.startswith(b"\r\n", self._pos):
            self._pos += 2

    def _start(self, out: list) -> bool:
        self._skip_blank_lines()  # tolerate a preamble of blank lines
        src, pos = self._src, self._pos
        end = src.find(b"\r\n", pos)
        if end < 0:
            left = len(src) - pos
            if left > MAX_BOUNDARY + 2 or (left >= 2 and not src.startswith(b"--", pos)):
                raise MultipartError("body does not start with a '--boundary' line")
            return False
        line = bytes(src[pos:end]).rstrip(b" \t")
        if not line.startswith(b"--") or len(line) < 3 or len(line) > MAX_BOUNDARY + 2:
            raise MultipartError("body does not start with a '--boundary' line")
        found = line[2:]
        if self.boundary is not None and found not in (self.boundary, b"--" + self.boundary):
            raise MultipartError(
                f"first boundary {found!r} differs from the Content-Type's {self.boundary!r}"
            )
        self.boundary = found
        self._pos = end + 2
        self._state = "headers"
        return True

    def _headers(self, out: list) -> bool:
        src, pos = self._src, self._pos
        if src.startswith(b"\r\n", pos):  # a part with no headers at all
            end = pos
        else:
            end = src.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(src) - pos > MAX_HEADERS:
                    raise MultipartError(f"part {self.parts + 1} headers exceed {MAX_HEADERS} bytes")
                return False
            if end - pos > MAX_HEADERS:
                raise MultipartError(f"part {self.parts + 1} headers exceed {MAX_HEADERS} bytes")
        self._length = self._content_length(bytes(src[pos:end]))
        self._pos = end + (2 if end == pos else 4)
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

    def _take(self, end: int) -> bytes | memoryview:
        """``_src[_pos:end]``: a view of an incoming chunk, or a copy."""
        src, pos = self._src, self._pos
        if src is self._carry:  # it will change: copy (once)
            with memoryview(src) as view:
                body = bytes(view[pos:end])
        elif 2 * (end - pos) >= len(src):
            body = memoryview(src)[pos:end]
        else:  # a view would keep a much larger chunk alive
            body = src[pos:end]
        self._pos = end
        return body

    def _body(self, out: list) -> bool:
        src, pos = self._src, self._pos
        if self._length is not None:
            if len(src) - pos < self._length:
                return False
            body = self._take(pos + self._length)
        else:
            mark = b"\r\n--" + self.boundary
            end = src.find(mark, pos + self._scanned)
            if end < 0:
                if len(src) - pos > self.max_part_bytes + len(mark):
                    raise self._too_large()
                # Next time search only the new bytes (and a mark's length before them).
                self._scanned = max(0, len(src) - pos - len(mark) + 1)
                return False
            self._scanned = 0
            if end - pos > self.max_part_bytes:
                raise self._too_large()
            body = self._take(end)
        self.parts += 1
        out.append(body)
        self._state = "delimiter"
        return True

    def _delimiter(self, out: list) -> bool:
        # After a body: optional CRLFs, then "--boundary" and either CRLF or "--" (the end).
        self._skip_blank_lines()
        src, pos = self._src, self._pos
        if len(src) - pos == 1 and src[pos] == 13:  # half a line break: wait for the rest
            return False
        marker = b"--" + self.boundary
        need = len(marker) + 2
        if len(src) - pos < need:
            if not marker.startswith(bytes(src[pos : pos + len(marker)])):
                raise self._no_boundary()
            return False
        if not src.startswith(marker, pos):
            raise self._no_boundary()
        tail = bytes(src[pos + len(marker) : pos + need])
        if tail == b"--":
            self.finished = True
            self._pos = len(src)
            return False
        end = src.find(b"\r\n", pos + len(marker))
        if end < 0:
            if len(src) - pos > MAX_BOUNDARY + 4:
                raise self._no_boundary()
            return False
        if src[pos + len(marker) : end].strip(b" \t"):
            raise self._no_boundary()
        self._pos = end + 2
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


_STATES = {
    "start": MpjpegParser._start,
    "headers": MpjpegParser._headers,
    "body": MpjpegParser._body,
    "delimiter": MpjpegParser._delimiter,
}
