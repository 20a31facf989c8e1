"""The load generator's parsers: HTTP heads, chunked bodies, MJPEG parts, frame stamps."""

from __future__ import annotations

import pytest
import simplejpeg

from bench.clients import mpjpeg_chunk, ws_frame
from bench.frames import camera_jpeg, read_stamp, stamped, stamped_size
from bench.protocol import (
    ChunkedDecoder,
    MjpegResponseReader,
    MultipartReader,
    ProtocolError,
    boundary_of,
    parse_response_head,
)
from helpers import make_jpeg


def chunked(*payloads: bytes) -> bytes:
    """Encode payloads as HTTP chunks, ending the body."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"


def feed_bytewise(reader, data: bytes, step: int) -> list:
    """Feed ``data`` in pieces of ``step`` bytes; collect what comes out."""
    out = []
    for i in range(0, len(data), step):
        out.extend(reader.feed(data[i : i + step]))
    return out


def test_response_head_fields():
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n"
        b"Transfer-Encoding: chunked"
    )
    assert head.status == 200
    assert head.chunked and head.keep_alive and head.content_length is None
    assert boundary_of(head.headers["content-type"]) == "frame"


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive", True),
    ],
)
def test_keep_alive_rules(raw, keep_alive):
    assert parse_response_head(raw).keep_alive is keep_alive


@pytest.mark.parametrize("raw", [b"garbage", b"HTTP/1.1 abc OK", b"HTTP/1.1 200 OK\r\nno colon"])
def test_bad_heads_are_refused(raw):
    with pytest.raises(ProtocolError):
        parse_response_head(raw)


def test_boundary_may_be_quoted_and_must_exist():
    assert boundary_of('multipart/x-mixed-replace; boundary="ffmpeg"') == "ffmpeg"
    with pytest.raises(ProtocolError):
        boundary_of("image/jpeg")


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_chunked_decoder_rebuilds_body_whatever_the_split(step):
    payloads = [b"hello", b"x" * 300, b"\r\n\r\n", b"end"]
    decoder = ChunkedDecoder()
    wire = chunked(*payloads)
    body = b"".join(decoder.feed(wire[i : i + step]) for i in range(0, len(wire), step))
    assert body == b"".join(payloads)
    assert decoder.done


def test_chunked_decoder_rejects_bad_sizes():
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"zz\r\nabc")
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"3\r\nabcXX")


def mjpeg_parts(jpegs: list[bytes], with_length: bool = True) -> bytes:
    out = b""
    for jpeg in jpegs:
        length = b"Content-Length: %d\r\n" % len(jpeg) if with_length else b""
        out += b"--frame\r\nContent-Type: image/jpeg\r\n" + length + b"\r\n" + jpeg + b"\r\n"
    return out


@pytest.mark.parametrize("with_length", [True, False])
@pytest.mark.parametrize("step", [1, 5, 4096, 10**6])
def test_multipart_reader_returns_every_jpeg(with_length, step):
    jpegs = [make_jpeg(64, 48, seed=i) for i in range(4)]
    wire = mjpeg_parts(jpegs, with_length) + b"--frame\r\n"  # next part's boundary begins
    parts = feed_bytewise(MultipartReader("frame"), wire, step)
    assert [p.body for p in parts] == jpegs
    assert parts[0].headers["content-type"] == "image/jpeg"


def test_multipart_reader_without_length_takes_a_complete_jpeg_at_once():
    """A Flask-style part (no Content-Length) is complete when the data ends with EOI."""
    jpeg = make_jpeg(64, 48)
    parts = MultipartReader("frame").feed(mjpeg_parts([jpeg], with_length=False))
    assert [p.body for p in parts] == [jpeg]


def test_multipart_reader_stops_at_closing_boundary_and_skips_preamble():
    reader = MultipartReader("ffmpeg")
    wire = b"preamble\r\n--ffmpeg\r\nContent-length: 3\r\n\r\nabc\r\n--ffmpeg--\r\n"
    parts = reader.feed(wire)
    assert [p.body for p in parts] == [b"abc"]
    assert parts[0].headers["content-length"] == "3"  # mixed-case header name, as ffmpeg sends
    assert reader.ended


@pytest.mark.parametrize("chunked_body", [True, False])
def test_mjpeg_response_reader_parses_whole_response(chunked_body):
    jpegs = [make_jpeg(32, 32, seed=i) for i in range(3)]
    parts = mjpeg_parts(jpegs)
    if chunked_body:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: multipart/x-mixed-replace; boundary=frame\r\ntransfer-encoding: chunked\r\n\r\n"
        body = chunked(*(parts[i : i + 333] for i in range(0, len(parts), 333)))
    else:
        head = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
        body = parts
    got = feed_bytewise(MjpegResponseReader(), head + body, 97)
    assert [p.body for p in got] == jpegs


def test_mjpeg_response_reader_refuses_an_error_status():
    with pytest.raises(ProtocolError, match="404"):
        MjpegResponseReader().feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


def test_stamped_frame_is_a_valid_jpeg_carrying_its_stamp():
    jpeg = camera_jpeg(160, 120)
    head, tail = stamped(jpeg, 42, 1234.5)
    frame = head + bytes(tail)
    assert len(frame) == stamped_size(jpeg)
    assert read_stamp(frame) == (42, 1234.5)
    height, width, _, _ = simplejpeg.decode_jpeg_header(frame)
    assert (width, height) == (160, 120)
    assert simplejpeg.decode_jpeg(frame).shape == (120, 160, 3)
    assert read_stamp(jpeg) is None  # an unstamped JPEG has no COM segment first


def test_mpjpeg_chunk_and_ws_frame_encode_the_whole_frame():
    jpeg = make_jpeg(64, 48)
    head, tail = stamped(jpeg, 7, 1.0)
    wire = b"".join(bytes(p) for p in mpjpeg_chunk(head, tail))
    decoder = ChunkedDecoder()
    parts = MultipartReader("frame").feed(decoder.feed(wire))
    assert read_stamp(parts[0].body) == (7, 1.0)
    message = b"".join(bytes(p) for p in ws_frame(head, tail))
    assert message[0] == 0x82 and message[1] & 0x80  # final binary frame, masked
    size = int.from_bytes(message[2:4], "big")
    assert message[1] & 0x7F == 126 and size == stamped_size(jpeg)
    assert message[8:] == head + bytes(tail)  # the zero mask leaves the payload unchanged
