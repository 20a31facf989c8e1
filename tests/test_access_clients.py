"""Real clients with credentials against a server with access control (issue 14, item 9).

ffmpeg and OpenCV (its FFmpeg backend) take Basic credentials from the URL and send
them after the 401 challenge; ffmpeg publishes with an ``Authorization`` header of its
own; the ``websockets`` client and ``requests`` send theirs.
"""

from __future__ import annotations

import signal
import subprocess

import cv2
import httpx
import pytest
import requests
import simplejpeg
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import ServerProcess, iter_parts, make_jpeg, wait_for

PASSWORD = "viewer-password-0b7c"  # URL-safe: it goes into URLs as is
PUB_TOKEN = "token-of-pub-93ad"
VIEWER = ("viewer", PASSWORD)
FRAMES = [make_jpeg(160, 120, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("clients"), {"auth": {"users": [
        {"name": "viewer", "password": PASSWORD, "permissions": [{"action": "view"}]},
        {"name": "pub", "token": PUB_TOKEN, "permissions": [{"action": "publish"}]},
    ]}})
    try:
        yield server.start()
    finally:
        server.stop()


def publish(server, name: str, jpeg: bytes = FRAMES[0]) -> None:
    response = httpx.post(f"{server.url}/publish/{name}", content=jpeg, timeout=10, headers={
        "Content-Type": "image/jpeg", "Authorization": f"Bearer {PUB_TOKEN}"})
    assert response.status_code == 200, response.text


def with_credentials(server, path: str) -> str:
    return f"http://viewer:{PASSWORD}@127.0.0.1:{server.port}{path}"


def total_frames(server, name: str) -> int:
    response = httpx.get(f"{server.url}/api/streams/{name}/stats", auth=VIEWER, timeout=10)
    return response.json()["total_frames"] if response.status_code == 200 else 0


def test_ffmpeg_reads_a_stream_with_basic_credentials_in_its_url(server, tmp_path):
    publish(server, "cam_ffmpeg_view")
    out = tmp_path / "frame.jpg"
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "mpjpeg",
         "-i", with_credentials(server, "/stream/cam_ffmpeg_view"), "-frames:v", "1", str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert simplejpeg.decode_jpeg_header(out.read_bytes())[:2] == (120, 160)


def test_ffmpeg_publishes_with_a_bearer_header(server):
    name = "cam_ffmpeg_pub"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", "testsrc=size=320x240:rate=15",
         "-headers", f"Authorization: Bearer {PUB_TOKEN}\r\n",
         "-f", "mpjpeg", "-method", "POST", f"{server.url}/publish/{name}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: total_frames(server, name) > 0 or ffmpeg.poll() is not None,
                 what="ffmpeg's first frame")
        assert ffmpeg.poll() is None, "ffmpeg ended before publishing"
        with httpx.stream("GET", f"{server.url}/stream/{name}", auth=VIEWER,
                          timeout=10) as live:
            assert live.status_code == 200
            received = []
            for _, jpeg in iter_parts(live.iter_raw()):
                received.append(jpeg)
                if len(received) == 3:
                    break
        assert all(simplejpeg.decode_jpeg_header(j)[:2] == (240, 320) for j in received)
    finally:
        ffmpeg.send_signal(signal.SIGINT)
        try:
            _, err = ffmpeg.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            ffmpeg.kill()
            _, err = ffmpeg.communicate()
    assert ffmpeg.returncode in (0, 255), err


def test_opencv_reads_a_stream_with_basic_credentials_in_its_url(server):
    publish(server, "cam_opencv")
    capture = cv2.VideoCapture(
        with_credentials(server, "/stream/cam_opencv"), cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 30000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 30000],
    )
    try:
        assert capture.isOpened()
        ok, image = capture.read()
    finally:
        capture.release()
    assert ok and image.shape == (120, 160, 3)


def test_websockets_client_publishes_with_an_authorization_header(server):
    url = f"ws://127.0.0.1:{server.port}/ws/publish/cam_ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10).close()
    assert refused.value.response.status_code == 401
    with connect(url, additional_headers={"Authorization": f"Bearer {PUB_TOKEN}"},
                 open_timeout=10) as ws:
        for jpeg in FRAMES:
            ws.send(jpeg)
    wait_for(lambda: total_frames(server, "cam_ws") == len(FRAMES), what="the frames")
    snapshot = httpx.get(f"{server.url}/snapshot/cam_ws", auth=VIEWER, timeout=10)
    assert snapshot.content == FRAMES[-1]


def test_requests_with_basic_auth(server):
    files = {"frame": ("frame.jpg", FRAMES[1], "image/jpeg")}
    published = requests.post(f"{server.url}/publish/cam_requests", files=files,
                              auth=("pub", PUB_TOKEN), timeout=10)  # the token as password
    assert published.status_code == 200, published.text
    refused = requests.get(f"{server.url}/snapshot/cam_requests", timeout=10)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    snapshot = requests.get(f"{server.url}/snapshot/cam_requests", auth=VIEWER, timeout=10)
    assert snapshot.status_code == 200 and snapshot.content == FRAMES[1]
    with requests.get(f"{server.url}/stream/cam_requests", auth=VIEWER, stream=True,
                      timeout=10) as live:
        assert live.status_code == 200
        _, jpeg = next(iter_parts(live.iter_content(chunk_size=None)))
    assert jpeg == FRAMES[1]
