"""The incremental multipart/x-mixed-replace parser, fed the way real publishers send."""

import pytest

from robogpt_video.errors import FrameTooLarge
from robogpt_video.mpjpeg import (
    MpjpegParser,
    MultipartError,
    boundary_from_content_type,
    looks_like_multipart,
)

A, B, C = b"\xff\xd8first\xff\xd9", b"\xff\xd8second--ffmpeg\r\n\xff\xd9", b"\xff\xd8third\xff\xd9"


def ffmpeg_body(*bodies: bytes) -> bytes:
    """What ``ffmpeg -f mpjpeg`` writes: a boundary line, then per frame headers + body + boundary."""
    out = b"--ffmpeg\r\n"
    for body in bodies:
        out += b"Content-type: image/jpeg\r\nContent-length: %d\r\n\r\n" % len(body)
        out += body + b"\r\n--ffmpeg\r\n"
    return out


def no_length_body(*bodies: bytes, boundary=b"frame") -> bytes:
    out = b""
    for body in bodies:
        out += b"--" + boundary + b"\r\nContent-Type: image/jpeg\r\n\r\n" + body + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def feed_all(parser: MpjpegParser, data: bytes, step: int) -> list[bytes]:
    parts = []
    for i in range(0, len(data), step):
        parts += parser.feed(data[i : i + step])
    parser.close()
    return parts


@pytest.mark.parametrize("step", [1, 3, 10, 4096])
def test_ffmpeg_parts_by_length_in_any_chunking(step):
    # B contains the boundary text itself: only the length header delimits it correctly.
    parser = MpjpegParser(max_part_bytes=1000)
    assert feed_all(parser, ffmpeg_body(A, B, C), step) == [A, B, C]
    assert parser.boundary == b"ffmpeg"
    assert parser.parts == 3


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_parts_without_length_are_cut_at_the_next_boundary(step):
    parser = MpjpegParser(max_part_bytes=1000)
    assert feed_all(parser, no_length_body(A, C), step) == [A, C]
    assert parser.finished


def test_preamble_blank_lines_and_header_hint_are_accepted():
    parser = MpjpegParser(1000, boundary=b"ffmpeg")
    assert parser.feed(b"\r\n" + ffmpeg_body(A)) == [A]
    parser.close()


def test_closing_boundary_ends_the_stream_and_ignores_the_epilogue():
    parser = MpjpegParser(1000)
    assert parser.feed(no_length_body(A) + b"epilogue") == [A]
    assert parser.finished
    assert parser.feed(b"more") == []


@pytest.mark.parametrize(
    "body, code, words",
    [
        (b"\xff\xd8\xff\xe0 a jpeg", "bad_multipart", "does not start"),
        (b"--ffmpeg\r\nContent-length: x\r\n\r\n", "bad_multipart", "bad Content-Length"),
        (b"--ffmpeg\r\nContent-length: -1\r\n\r\n", "bad_multipart", "negative"),
        (b"--ffmpeg\r\nContent-length: 3\r\n\r\nabcXX--ffmpeg\r\n", "bad_multipart", "not followed"),
        (b"--ffmpeg\r\n" + b"X-Pad: " + b"a" * 20000, "bad_multipart", "headers exceed"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body, code, words):
    parser = MpjpegParser(1000)
    with pytest.raises(MultipartError) as info:
        parser.feed(body)
        parser.close()
    assert info.value.code == code
    assert words in info.value.message


def test_parts_over_the_limit_are_refused_by_header_and_by_search():
    with pytest.raises(FrameTooLarge):
        MpjpegParser(10).feed(b"--b\r\nContent-Length: 11\r\n\r\n")
    parser = MpjpegParser(10)
    with pytest.raises(FrameTooLarge):
        parser.feed(b"--b\r\n\r\n" + b"x" * 40)
    assert MpjpegParser(11).feed(ffmpeg_body(b"x" * 11)) == [b"x" * 11]


def test_a_body_cut_inside_a_part_is_a_truncated_upload():
    parser = MpjpegParser(1000)
    data = ffmpeg_body(A, B)
    assert parser.feed(data[:-20]) == [A]
    with pytest.raises(MultipartError) as info:
        parser.close()
    assert info.value.code == "truncated_upload"


def test_helpers():
    assert boundary_from_content_type('multipart/x-mixed-replace; boundary="ab c"') == b"ab c"
    assert boundary_from_content_type("multipart/x-mixed-replace") is None
    assert looks_like_multipart(b"\r\n--ff") and looks_like_multipart(b"--ff")
    assert not looks_like_multipart(b"\xff\xd8\xff\xe0")


def test_parts_before_an_error_in_the_same_chunk_are_returned_first():
    parser = MpjpegParser(1000)
    assert parser.feed(ffmpeg_body(A) + b"Content-length: 2000\r\n\r\n") == [A]
    with pytest.raises(FrameTooLarge):
        parser.feed(b"")
    parser = MpjpegParser(1000)
    assert parser.feed(ffmpeg_body(A) + b"Content-length: 2\r\n\r\nxyBAD") == [A, b"xy"]
    with pytest.raises(MultipartError):
        parser.close()


def _between_after_each_byte(parser: MpjpegParser, data: bytes) -> list[bool]:
    states = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        states.append(parser.between_parts)
    return states


def test_between_parts_only_at_part_boundaries():
    # ffmpeg: the boundary line after each frame, so between frames it is already sent.
    parser = MpjpegParser(1000)
    assert parser.between_parts  # nothing yet
    body = ffmpeg_body(A, C)
    states = _between_after_each_byte(parser, body)
    a_end = body.index(A) + len(A)  # A is whole once this many bytes came
    assert states[len(b"--ffmpeg\r\n") - 1] is True  # the first boundary line alone
    assert not any(states[len(b"--ffmpeg\r\n") : a_end - 1])  # A's headers and body
    assert states[a_end - 1] is True
    assert states[a_end + 2] is False  # "\r\n-": the next boundary line under way
    assert states[a_end + len(b"\r\n--ffmpeg\r\n") - 1] is True
    assert states[-1] is True
    # Our publisher: the boundary line before each frame.
    parser = MpjpegParser(1000)
    part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(A) + A + b"\r\n"
    states = _between_after_each_byte(parser, part + part[:5])
    assert states[len(part) - 1] is True
    assert not any(states[len(b"--frame\r\n") : len(part) - 3])  # up to A's last byte
    assert states[-1] is False  # "--fra": a boundary line under way


def test_a_part_without_length_counts_as_between_parts():
    parser = MpjpegParser(1000)
    parser.feed(b"--frame\r\nContent-Type: image/jpeg\r\n")
    assert not parser.between_parts  # headers under way
    parser.feed(b"\r\n" + A[:4])
    assert parser.between_parts  # only the next boundary shows where it ends
    parser.feed(A[4:] + b"\r\n--frame--\r\n")
    assert parser.finished and not parser.between_parts
