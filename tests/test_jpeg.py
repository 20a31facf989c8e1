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


def _encoders(width: int, height: int) -> dict[str, bytes]:
    """The same picture from the encoders cameras and robots really use."""
    import av
    import cv2
    import numpy as np
    import simplejpeg

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x ^ y) & 255], -1).astype(np.uint8)
    out = {
        "simplejpeg": simplejpeg.encode_jpeg(rgb, quality=85),
        "simplejpeg 4:4:4": simplejpeg.encode_jpeg(rgb, quality=95, colorsubsampling="444"),
        "simplejpeg grey": simplejpeg.encode_jpeg(rgb[..., :1].copy(), colorspace="GRAY"),
        "opencv": cv2.imencode(".jpg", rgb)[1].tobytes(),
        "opencv progressive": cv2.imencode(
            ".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "opencv restart markers": cv2.imencode(
            ".jpg", rgb, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes(),
    }
    encoder = av.CodecContext.create("mjpeg", "w")  # ffmpeg's encoder, as in ffmpeg -f mpjpeg
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = __import__("fractions").Fraction(1, 30)
    image = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    out["ffmpeg mjpeg"] = b"".join(bytes(p) for p in encoder.encode(image))
    return out


@pytest.mark.parametrize("size", [(64, 48), (641, 479), (1280, 720)])
def test_header_size_matches_libjpeg_turbo_for_real_encoders(size):
    import simplejpeg

    for name, jpeg in _encoders(*size).items():
        height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        info = inspect_jpeg(jpeg)
        assert (info.width, info.height) == (width, height) == size, name


def test_exif_app1_segment_before_the_frame_header_is_walked_over():
    # A camera JPEG with a large EXIF block (thumbnail and all) before SOF.
    exif = b"Exif\x00\x00" + b"\x00" * 30000
    jpeg = GOOD[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + GOOD[2:]
    assert (inspect_jpeg(jpeg).width, inspect_jpeg(jpeg).height) == (64, 48)


@pytest.mark.parametrize(
    "cut",
    [
        lambda j: j[:2] + b"\xff\xe0\x00\x01" + j[2:],  # a segment length below 2
        lambda j: j[:2] + b"\xff\xe0\xff\xf0" + j[-2:],  # a length past the end
        lambda j: j[:2] + j[j.index(b"\xff\xda"):],  # scan data with no frame header
        lambda j: j[:2] + b"\xff\xd8" + j[2:],  # a second start-of-image
    ],
)
def test_broken_header_structure_is_corrupt(cut):
    with pytest.raises(InvalidFrame) as info:
        inspect_jpeg(cut(GOOD))
    assert info.value.code == "corrupt_jpeg"
