"""Reading upload bodies within a size limit, and taking the frame out of them."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..errors import FrameTooLarge, InvalidFrame

FIELD = "frame"
MULTIPART_SLACK = 64 * 1024  # room for part headers and boundaries around the frame


def _too_large(limit: int) -> FrameTooLarge:
    return FrameTooLarge(f"frame exceeds server.max_frame_size_mb ({limit / 1048576:g} MB)")


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it passes ``limit`` bytes.

    A declared Content-Length over the limit is refused before any byte is read.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise InvalidFrame("Content-Length is not a number", code="bad_request") from None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def peek(request: Request, size: int = 4) -> tuple[Request, bytes]:
    """The first ``size`` bytes of the body, and a request that still yields all of it.

    Lets a body without a Content-Type be recognised by its first bytes (ffmpeg's
    mpjpeg POST sends no Content-Type) before deciding how to read it.
    """
    seen: list[dict] = []
    head = b""
    while len(head) < size:
        message = await request.receive()
        seen.append(message)
        if message["type"] != "http.request":
            break
        head += message.get("body", b"")
        if not message.get("more_body", False):
            break
    receive = request.receive

    async def replay() -> dict:
        return seen.pop(0) if seen else await receive()

    return Request(request.scope, replay), head[:size]


def frame_from_multipart(body: bytes, content_type: str, limit: int) -> bytes:
    """The ``frame`` field of a ``multipart/form-data`` body."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidFrame("multipart body has no boundary", code="bad_multipart")

    names: list[str] = []
    found: list[bytes] = []
    state = {"header": b"", "field": b"", "value": b"", "name": None, "data": []}

    def on_part_begin() -> None:
        state["name"] = None
        state["data"] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        if state["field"].lower() == b"content-disposition":
            _, disposition = parse_options_header(state["value"])
            name = disposition.get(b"name", b"").decode("utf-8", "replace")
            state["name"] = name
            names.append(name)
        state["field"] = b""
        state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == FIELD:
            state["data"].append(data[start:end])

    def on_part_end() -> None:
        if state["name"] == FIELD and not found:
            found.append(b"".join(state["data"]))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types
        raise InvalidFrame(f"malformed multipart body: {exc}", code="bad_multipart") from None
    if not found and FIELD in names:
        raise InvalidFrame(
            f"multipart body ended inside the '{FIELD}' field (truncated upload)",
            code="truncated_upload",
        )
    if not found:
        listed = ", ".join(repr(n) for n in names) or "none"
        raise InvalidFrame(
            f"multipart body has no '{FIELD}' field (fields sent: {listed})",
            code="missing_frame_field",
        )
    if len(found[0]) > limit:
        raise _too_large(limit)
    return found[0]
