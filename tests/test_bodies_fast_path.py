"""The multipart fast path finds the same frame as python-multipart, or steps aside."""

from __future__ import annotations

import httpx
import pytest
import requests

from helpers import make_jpeg, publish
from robogpt_video.errors import FrameTooLarge, InvalidFrame
from robogpt_video.web.bodies import _parse_frame_field, _single_frame_field, frame_from_multipart

JPEG = make_jpeg(160, 120)


def encoded(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    """A multipart body exactly as httpx sends it, and its Content-Type."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    request.read()
    return request.content, request.headers["content-type"]


def boundary(content_type: str) -> bytes:
    return content_type.split("boundary=")[1].encode()


def test_requests_and_httpx_bodies_take_the_fast_path():
    prepared = requests.Request("POST", "http://x/", files={"frame": ("f.jpg", JPEG, "image/jpeg")}).prepare()
    content_type = prepared.headers["Content-Type"]
    assert _single_frame_field(prepared.body, boundary(content_type)) == JPEG
    body, content_type = encoded({"frame": ("f.jpg", JPEG, "image/jpeg")})
    assert _single_frame_field(body, boundary(content_type)) == JPEG
    assert frame_from_multipart(body, content_type, 1 << 20) == JPEG


@pytest.mark.parametrize(
    "files, data",
    [
        ({"frame": ("f.jpg", JPEG, "image/jpeg")}, {"note": "x"}),  # another field first
        ({"image": ("f.jpg", JPEG, "image/jpeg")}, None),  # wrong field name
        ({"framex": ("f.jpg", JPEG, "image/jpeg")}, None),
        ({"frame": ("f.jpg", JPEG, "image/jpeg"), "extra": ("g.jpg", JPEG, "image/jpeg")}, None),
    ],
)
def test_unusual_bodies_fall_back_to_the_full_parser(files, data):
    body, content_type = encoded(files, data)
    assert _single_frame_field(body, boundary(content_type)) is None
    if "frame" in files:
        assert frame_from_multipart(body, content_type, 1 << 20) == JPEG
    else:
        with pytest.raises(InvalidFrame) as err:
            frame_from_multipart(body, content_type, 1 << 20)
        assert err.value.code == "missing_frame_field"


def test_truncated_body_is_reported_by_the_full_parser():
    body, content_type = encoded({"frame": ("f.jpg", JPEG, "image/jpeg")})
    cut = body[:-60]
    assert _single_frame_field(cut, boundary(content_type)) is None
    with pytest.raises(InvalidFrame) as err:
        frame_from_multipart(cut, content_type, 1 << 20)
    assert err.value.code in ("truncated_upload", "bad_multipart")
    with pytest.raises(InvalidFrame):
        _parse_frame_field(cut, boundary(content_type))


def test_frame_over_the_limit_is_refused_on_the_fast_path():
    body, content_type = encoded({"frame": ("f.jpg", JPEG, "image/jpeg")})
    with pytest.raises(FrameTooLarge) as err:
        frame_from_multipart(body, content_type, len(JPEG) - 1)
    assert err.value.status_code == 413


def test_server_accepts_brief_client_frames(server):
    with httpx.Client(timeout=10) as client:
        for seed in range(3):
            response = publish(server.url, "cam", make_jpeg(seed=seed), client)
            assert response.status_code == 200
            assert response.json()["frame_size"] == len(make_jpeg(seed=seed))
        snap = client.get(f"{server.url}/snapshot/cam")
    assert snap.content == make_jpeg(seed=2)
