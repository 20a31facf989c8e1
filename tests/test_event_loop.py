"""Nothing on the request path blocks the event loop: the real app under blockbuster.

blockbuster wraps blocking functions (file and socket I/O, sleeps, lock waits) so that
calling one from a running event loop with our package on the stack raises. The app
runs in-process on uvicorn with the standard asyncio loop (blockbuster watches asyncio
loops), and a real HTTP client drives every kind of request from another thread.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import uvicorn
from blockbuster import BlockBuster

from helpers import free_port, make_jpeg, publish, wait_for
from robogpt_video.config import load_settings
from robogpt_video.web import create_app


class Errors(logging.Handler):
    """Collects every log record at WARNING or above."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_request_paths_never_block_the_event_loop(tmp_path):
    port = free_port()
    settings = load_settings(None, {
        "server": {"host": "127.0.0.1", "port": port},
        "recording": {"directory": str(tmp_path / "recordings"), "idle_close_seconds": 0.5},
        "cleanup": {"interval_seconds": 0.2},
        "logging": {"file": None},
    })
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
                            http="httptools", log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    thread.start()
    buster = BlockBuster(scanned_modules=["robogpt_video"])
    # prometheus-client's process metrics read /proc, served from kernel memory: fine.
    for function in buster.functions.values():
        function.can_block_in("prometheus_client/process_collector.py", "collect")
    try:
        wait_for(lambda: server.started, what="the in-process server")
        buster.activate()
        url = f"http://127.0.0.1:{port}"
        exercise(url)
    finally:
        buster.deactivate()
        server.should_exit = True
        thread.join(15)
        logging.getLogger().removeHandler(errors)
    assert not thread.is_alive()
    blocking = [r.getMessage() + str(r.exc_info) for r in errors.records
                if "Blocking" in r.getMessage() + str(r.exc_info)]
    assert blocking == []


def exercise(url: str) -> None:
    """Every kind of request, asserting each answers as it should (a block would 500)."""
    with httpx.Client(timeout=10) as client:
        for seed in range(5):
            assert publish(url, "cam", make_jpeg(seed=seed), client).status_code == 200
        assert publish(url, "cam", b"junk", client).status_code == 400
        with client.stream("GET", f"{url}/stream/cam") as view:
            assert view.status_code == 200
            next(view.iter_raw())
        for path in ("/snapshot/cam", "/api/streams", "/api/streams/cam/stats", "/health",
                     "/metrics", "/", "/openapi.json"):
            assert client.get(url + path).status_code == 200, path
        time.sleep(1.0)  # the idle segment closes; cleanup sweeps a few times
        listing = wait_for(lambda: [r for r in client.get(f"{url}/api/recordings").json()
                                    ["recordings"] if r.get("status") == "complete"],
                           what="a complete recording")
        recording = f"{url}/api/recordings/cam/{listing[0]['file']}"
        assert client.get(recording, headers={"Range": "bytes=0-99"}).status_code == 206
        with client.stream("GET", recording + "/play") as play:
            assert play.status_code == 200
            next(play.iter_raw())
        assert client.post(f"{url}/api/cleanup/run?dry_run=true").status_code == 200
        assert client.delete(recording).status_code == 200
        assert client.delete(f"{url}/api/streams/cam").status_code == 200
