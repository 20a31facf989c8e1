"""StreamPublisher against a real server: delivery, max_fps, restarts, errors, imports."""

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import simplejpeg
from helpers import REPO, make_jpeg, wait_for

from robogpt_video.client import (
    ConfigurationError,
    EncodeError,
    NotRunning,
    PublishConnectionError,
    PublisherError,
    ServerError,
    SourceError,
    StreamPublisher,
)

TRANSPORTS = ["http", "stream"]


def total_frames(server, name: str) -> int:
    response = httpx.get(f"{server.url}/api/streams/{name}/stats", timeout=5)
    return response.json()["total_frames"] if response.status_code == 200 else 0


def feed_until(publisher, condition, timeout: float = 15.0, interval: float = 0.01) -> None:
    """Offer a new frame every ``interval`` seconds until ``condition()`` holds."""
    image = np.zeros((120, 160, 3), np.uint8)
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        image[:] = n % 256
        publisher.publish_frame(image)
        n += 1
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; stats: {publisher.stats()}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_frames_arrive_and_max_fps_holds(shared_server, transport):
    server = shared_server
    name = f"pub_{transport}"
    publisher = StreamPublisher(server.url, name, quality=80, max_fps=10, transport=transport)
    publisher.start()
    started = time.monotonic()
    try:
        # Offer ≈100 frames a second for two seconds: the publisher may send ≈20.
        with pytest.raises(AssertionError):
            feed_until(publisher, lambda: False, timeout=2.0)
    finally:
        publisher.stop()
    elapsed = time.monotonic() - started
    stats = publisher.stats()
    arrived = total_frames(server, name)
    assert arrived == stats["frames_sent"], stats
    assert 5 <= arrived <= 10 * elapsed + 2, (elapsed, stats)  # the upper bound matters
    assert stats["frames_dropped"] > arrived, stats  # newest frame wins; the rest counted
    assert stats["errors"] == 0, stats
    jpeg = httpx.get(f"{server.url}/snapshot/{name}").content
    assert simplejpeg.decode_jpeg_header(jpeg)[:2] == (120, 160)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publisher_resumes_by_itself_after_a_server_restart(start_server, hold_port, transport):
    # The publisher keeps its URL, so the server comes back on the same port; the port
    # stays held in between so that nothing else can take it.
    server = start_server({"server": {"port": hold_port(for_server=True)}})
    name = f"restart_{transport}"
    with StreamPublisher(server.url, name, max_fps=30, transport=transport) as publisher:
        feed_until(publisher, lambda: total_frames(server, name) >= 3)
        server.stop()
        feed_until(publisher, lambda: publisher.stats()["errors"] >= 1)
        server.start()  # same port, empty registry
        feed_until(publisher, lambda: total_frames(server, name) >= 3)
        stats = publisher.stats()
    assert stats["reconnects"] >= 1
    assert stats["connected"]


def test_context_manager_and_publish_jpeg_flush_the_last_frame(shared_server):
    server = shared_server
    jpeg = make_jpeg(seed=5)
    with StreamPublisher(server.url, "jpegs", max_fps=5) as publisher:
        publisher.publish_jpeg(jpeg)
    assert not publisher.running
    assert publisher.stats()["frames_sent"] == 1
    assert httpx.get(f"{server.url}/snapshot/jpegs").content == jpeg


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_frame_is_counted_and_publishing_goes_on(shared_server, transport):
    server = shared_server
    name = f"refused_{transport}"
    with StreamPublisher(server.url, name, max_fps=50, transport=transport) as publisher:
        publisher.publish_jpeg(b"definitely not a jpeg")
        if transport == "http":  # answered at once
            wait_for(lambda: publisher.stats()["errors"] >= 1)
            assert "not_jpeg" in publisher.stats()["last_error"]
        else:  # a stream learns it when it writes the next frame
            wait_for(lambda: publisher.stats()["frames_sent"] >= 1)
        started = time.monotonic()
        feed_until(publisher, lambda: total_frames(server, name) >= 2)
        assert time.monotonic() - started < 3  # the refusal closed the connection; no stall
    assert publisher.stats()["errors"] >= 1


def test_an_unreachable_server_never_blocks_the_caller(hold_port):
    # Bound and never listening: every connection is refused.
    publisher = StreamPublisher(f"http://127.0.0.1:{hold_port()}", "nobody", backoff_max=0.2)
    with publisher:
        started = time.monotonic()
        for _ in range(200):
            publisher.publish_frame(np.zeros((48, 64, 3), np.uint8))
        assert time.monotonic() - started < 1.0
        feed_until(publisher, lambda: publisher.stats()["errors"] >= 3)
    stats = publisher.stats()
    assert stats["frames_sent"] == 0 and not stats["connected"]
    assert "refused" in stats["last_error"].lower() or "failed" in stats["last_error"].lower()


def test_errors_share_one_root_and_bad_arguments_are_refused():
    for error in (ConfigurationError, EncodeError, NotRunning, PublishConnectionError,
                  ServerError, SourceError):
        assert issubclass(error, PublisherError)
    for kwargs in ({"stream_name": "bad name"}, {"quality": 0}, {"max_fps": 0},
                   {"transport": "carrier-pigeon"}, {"server_url": "localhost:5000"},
                   {"server_url": "http://a:5000,b:5000"}, {"server_url": []},
                   {"server_url": " , "}, {"server_url": 5000}):
        with pytest.raises(ConfigurationError):
            StreamPublisher(**kwargs)
    several = StreamPublisher("http://a:5000/, http://b:5000")
    assert several.server_urls == ["http://a:5000", "http://b:5000"]
    assert several.server_url == "http://a:5000" and several.url == "http://a:5000/publish/webcam"
    assert StreamPublisher(["http://a:5000", "http://b:5000"]).server_urls == several.server_urls
    publisher = StreamPublisher()
    with pytest.raises(NotRunning):
        publisher.publish_jpeg(b"x")


def test_the_client_imports_nothing_from_the_server():
    code = (
        "import sys\n"
        "from client.publisher import StreamPublisher\n"
        "from robogpt_video.client import StreamPublisher as Same\n"
        "import robogpt_video.client.cli, robogpt_video.client.sources\n"
        "assert StreamPublisher is Same\n"
        "server = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'av', 'pydantic', 'simplejpeg') or m in "
        "('robogpt_video.config', 'robogpt_video.server', 'robogpt_video.streams', "
        "'robogpt_video.web')]\n"
        "assert not server, server\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
