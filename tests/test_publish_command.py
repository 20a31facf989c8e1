"""The webcam example and ``robogpt-video publish``, run as real processes with no camera."""

import subprocess
import sys

import httpx
import simplejpeg
from helpers import REPO

EXAMPLE = REPO / "client" / "examples" / "webcam_publisher.py"


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def stats(server, name: str) -> dict:
    return httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=5).json()


def test_webcam_example_publishes_a_test_pattern(shared_server):
    server = shared_server
    result = run([sys.executable, str(EXAMPLE), "--server", server.url, "--stream", "example",
                  "--camera", "test", "--quality", "70", "--fps", "10", "--duration", "3"])
    assert result.returncode == 0, result.stderr
    status = [line for line in result.stdout.splitlines() if "frames sent" in line]
    assert status, result.stdout  # a live status line, at least once a second
    assert "fps" in status[-1] and "errors" in status[-1]
    published = stats(server, "example")
    assert 10 <= published["total_frames"] <= 45  # ≈30 at 10 fps for 3 s; the cap holds
    assert f"{published['total_frames']} frames sent" in status[-1]
    assert (published["width"], published["height"]) == (640, 480)


def test_publish_command_streams_a_video_file(shared_server, tmp_path):
    server = shared_server
    video = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc=size=320x240:rate=25", "-t", "1", str(video)],
        check=True, timeout=60,
    )
    result = run([sys.executable, "-m", "robogpt_video", "publish", "--server", server.url,
                  "--stream", "fromfile", "--camera", str(video), "--fps", "15",
                  "--transport", "stream", "--duration", "2"])
    assert result.returncode == 0, result.stderr
    published = stats(server, "fromfile")
    assert published["total_frames"] >= 10  # the 1 s clip loops for 2 s
    jpeg = httpx.get(f"{server.url}/snapshot/fromfile").content
    assert simplejpeg.decode_jpeg_header(jpeg)[:2] == (240, 320)


def test_a_missing_camera_fails_with_a_helpful_message(shared_server, tmp_path):
    server = shared_server
    result = run([sys.executable, str(EXAMPLE), "--server", server.url,
                  "--camera", str(tmp_path / "nothing.mp4"), "--duration", "1"])
    assert result.returncode == 1
    assert "cannot open" in result.stderr and "--camera test" in result.stderr


def test_publish_command_fails_over_to_the_next_server(shared_server, hold_port):
    server = shared_server
    dead = f"http://127.0.0.1:{hold_port()}"  # bound, never listening: refused
    result = run([sys.executable, "-m", "robogpt_video", "publish", "--server", dead,
                  "--server", server.url, "--stream", "failover", "--camera", "test",
                  "--fps", "10", "--duration", "2"])
    assert result.returncode == 0, result.stderr
    assert f"if it fails: {server.url}" in result.stdout
    assert f"now publishing to {server.url}" in result.stdout
    assert stats(server, "failover")["total_frames"] >= 5
