import pytest

from helpers import make_jpeg
from robogpt_video.errors import InvalidFrame
from robogpt_video.jpeg import inspect_jpeg

GOOD = make_jpeg(64, 48)


def test_size_from_header():
    info = inspect_jpeg(GOOD)
    assert (info.width, info.height) == (64, 48)
    assert inspect_jpeg(memoryview(GOOD)) == info


def test_trailing_padding_after_eoi_is_accepted():
    assert inspect_jpeg(GOOD + b"\x00" * 8).width == 64


@pytest.mark.parametrize(
    "body, code",
    [
        (b"", "empty_frame"),
        (b"hello world", "not_jpeg"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not_jpeg"),
        (GOOD[: len(GOOD) // 2], "truncated_jpeg"),
        (GOOD[:2] + b"\x00" * 100 + GOOD[-2:], "corrupt_jpeg"),
        (b"\xff\xd8\xff\xd9", "corrupt_jpeg"),
    ],
)
def test_bad_frames(body, code):
    with pytest.raises(InvalidFrame) as info:
        inspect_jpeg(body)
    assert info.value.code == code
    assert info.value.status_code == 400
