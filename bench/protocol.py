"""Incremental parsers for what the load generator reads: HTTP heads, chunked bodies, MJPEG.

Pure byte-level code (no sockets) so it is unit-tested on its own. Buffers are
``bytearray``: CPython deletes from their front without moving the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ProtocolError(Exception):
    """The peer sent bytes that do not follow HTTP or multipart."""


@dataclass(slots=True)
class ResponseHead:
    """Status line and headers of an HTTP response (header names lower-cased)."""

    version: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def chunked(self) -> bool:
        """Whether the body uses ``Transfer-Encoding: chunked``."""
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    @property
    def content_length(self) -> int | None:
        """The declared body length, if any."""
        value = self.headers.get("content-length")
        return int(value) if value is not None else None


def parse_headers(block: bytes | bytearray) -> dict[str, str]:
    """``Name: value`` lines into a dict with lower-cased names."""
    headers: dict[str, str] = {}
    for line in bytes(block).decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def parse_response_head(block: bytes | bytearray) -> ResponseHead:
    """Parse a response head (status line + headers, without the final blank line)."""
    status_line, _, rest = bytes(block).partition(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {status_line[:80]!r}")
    return ResponseHead(parts[0], int(parts[1]), parse_headers(rest))


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise ProtocolError(f"no boundary in Content-Type {content_type!r}")


class ChunkedDecoder:
    """Turns a ``Transfer-Encoding: chunked`` byte stream back into the body bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # payload bytes still to come in the current chunk
        self._crlf = False  # the CRLF after a chunk's payload is still to skip
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Consume raw bytes; return the body bytes they complete (maybe empty)."""
        if self._buf:
            data = bytes(self._buf) + data
            self._buf = bytearray()
        view = memoryview(data)
        pieces: list[memoryview] = []
        pos, size = 0, len(data)
        while pos < size and not self.done:
            if self._left:  # payload: taken as views of ``data``, joined once below
                take = min(self._left, size - pos)
                pieces.append(view[pos : pos + take])
                pos += take
                self._left -= take
                self._crlf = not self._left
            elif self._crlf:
                if size - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk payload not followed by CRLF")
                pos += 2
                self._crlf = False
            else:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                pos = self._size_line(data[pos:end], end)
        self._buf += view[pos:]
        return b"".join(pieces)

    def _size_line(self, line: bytes, end: int) -> int:
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            self.done = True
        self._left = size
        return end + 2


@dataclass(slots=True)
class Part:
    """One part of a multipart body."""

    headers: dict[str, str]
    body: bytes


EOI_CRLF = b"\xff\xd9\r\n"


class MultipartReader:
    """Splits a ``multipart/x-mixed-replace`` body into parts as bytes arrive.

    Uses each part's Content-Length when it has one (our server, ffmpeg) and falls
    back to the next boundary, or a JPEG end marker ending the data so far, when it
    has none (a plain Flask generator sends none).
    """

    MAX_HEAD = 16 * 1024

    def __init__(self, boundary: str) -> None:
        self._delim = b"--" + boundary.encode("latin-1")
        self._next = b"\r\n" + self._delim
        self._buf = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> list[Part]:
        """Consume body bytes; return the parts they complete."""
        self._buf += data
        parts: list[Part] = []
        while not self.ended:
            part = self._one()
            if part is None:
                break
            parts.append(part)
        return parts

    def _one(self) -> Part | None:
        buf = self._buf
        start = buf.find(self._delim)
        if start < 0:
            if len(buf) > len(self._delim):  # keep a tail that may hold half a boundary
                del buf[: len(buf) - len(self._delim)]
            return None
        after = start + len(self._delim)
        if len(buf) < after + 2:
            return None
        if buf[after : after + 2] == b"--":
            self.ended = True
            return None
        head_end = buf.find(b"\r\n\r\n", after)
        if head_end < 0:
            if len(buf) - after > self.MAX_HEAD:
                raise ProtocolError("multipart part headers too long")
            return None
        headers = parse_headers(buf[after:head_end])
        body_start = head_end + 4
        length = headers.get("content-length")
        if length is not None:
            body_end = body_start + int(length)
            if len(buf) < body_end:
                return None
        else:
            body_end = buf.find(self._next, body_start)
            if body_end < 0 and buf.endswith(EOI_CRLF) and len(buf) > body_start + 2:
                # A JPEG that ends the bytes received so far is complete: take it now
                # rather than when the next boundary arrives a frame period later.
                body_end = len(buf) - 2
            elif body_end < 0:
                return None
        with memoryview(buf) as view:  # one copy, and released before the buffer shrinks
            body = bytes(view[body_start:body_end])
        del buf[:body_end]
        return Part(headers, body)


class MjpegResponseReader:
    """A whole ``GET /stream/<name>`` response: head, then (maybe chunked) multipart parts."""

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self._raw = bytearray()
        self._chunks: ChunkedDecoder | None = None
        self._parts: MultipartReader | None = None

    def feed(self, data: bytes) -> list[Part]:
        """Consume raw socket bytes; return the complete parts they carry."""
        if self.head is None:
            self._raw += data
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                if len(self._raw) > 64 * 1024:
                    raise ProtocolError("response head too long")
                return []
            self.head = parse_response_head(self._raw[:end])
            if self.head.status != 200:
                raise ProtocolError(f"viewer got HTTP {self.head.status}")
            boundary = boundary_of(self.head.headers.get("content-type", ""))
            self._parts = MultipartReader(boundary)
            self._chunks = ChunkedDecoder() if self.head.chunked else None
            data = bytes(self._raw[end + 4 :])
            self._raw = bytearray()
        if self._chunks is not None:
            data = self._chunks.feed(data)
        return self._parts.feed(data) if data else []
