"""Nothing on the request path blocks the event loop: the real app under blockbuster.

blockbuster wraps blocking functions (file and socket I/O, sleeps, lock waits) so that
calling one from a running event loop with our package on the stack raises. The app
runs in-process on aiohttp with the standard asyncio loop (blockbuster watches asyncio
loops), and real clients drive every kind of request from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import httpx
from aiohttp import web
from blockbuster import BlockBuster
from websockets.sync.client import connect

from helpers import iter_parts, make_jpeg, publish, wait_for
from robogpt_video.config import load_settings
from robogpt_video.web import create_app


class InProcessServer:
    """The real app on aiohttp in a thread of this process, on a port bound at once."""

    def __init__(self, settings):
        self.settings = settings
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        runner = web.AppRunner(create_app(self.settings), handler_cancellation=True,
                               shutdown_timeout=5)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self.started.set()
        try:
            await self.stop_event.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(15)
        self.sock.close()


class Errors(logging.Handler):
    """Collects every log record at WARNING or above."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_request_paths_never_block_the_event_loop(tmp_path):
    settings = load_settings(None, {
        "server": {"host": "127.0.0.1", "port": 0},
        "recording": {"directory": str(tmp_path / "recordings"), "idle_close_seconds": 0.5},
        "cleanup": {"interval_seconds": 0.2},
        "logging": {"file": None},
    })
    server = InProcessServer(settings)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    server.thread.start()
    buster = BlockBuster(scanned_modules=["robogpt_video"])
    # prometheus-client's process metrics read /proc, served from kernel memory: fine.
    for function in buster.functions.values():
        function.can_block_in("prometheus_client/process_collector.py", "collect")
    try:
        wait_for(server.started.is_set, what="the in-process server")
        buster.activate()
        exercise(f"http://127.0.0.1:{server.port}")
    finally:
        buster.deactivate()
        server.stop()
        logging.getLogger().removeHandler(errors)
    assert not server.thread.is_alive()
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
        # A resized variant (encoded in a worker thread), a capped viewer, a resized snapshot.
        assert publish(url, "cam", make_jpeg(640, 480, seed=6), client).status_code == 200
        with client.stream("GET", f"{url}/stream/cam?width=160&quality=50&fps=10") as view:
            assert view.status_code == 200
            parts = iter_parts(view.iter_raw())
            next(parts)
            assert publish(url, "cam", make_jpeg(640, 480, seed=7), client).status_code == 200
            next(parts)
        assert client.get(f"{url}/snapshot/cam?width=100").status_code == 200
        mixed = b"".join(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                         % (len(j), j) for j in (make_jpeg(seed=7), make_jpeg(seed=8)))
        assert client.post(f"{url}/publish/mixed", content=mixed, headers={
            "Content-Type": "multipart/x-mixed-replace; boundary=frame"}).json()["frames"] == 2
        with connect(url.replace("http", "ws") + "/ws/publish/ws") as ws:
            ws.send(make_jpeg(seed=9))
        wait_for(lambda: client.get(f"{url}/api/streams/ws/stats").json().get("total_frames") == 1)
        for path in ("/snapshot/cam", "/api/streams", "/api/streams/cam/stats", "/health",
                     "/metrics", "/", "/openapi.json"):
            assert client.get(url + path).status_code == 200, path
        listing = wait_for(lambda: [r for r in client.get(f"{url}/api/recordings").json()
                                    ["recordings"] if r.get("status") == "complete"],
                           what="a complete recording")
        recording = f"{url}/api/recordings/{listing[0]['stream_name']}/{listing[0]['file']}"
        assert client.get(recording, headers={"Range": "bytes=0-99"}).status_code == 206
        with client.stream("GET", recording + "/play") as play:
            assert play.status_code == 200
            next(play.iter_raw())
        # A clip of it: asked, followed, downloaded, asked again (from the cache).
        chosen = {"stream": listing[0]["stream_name"], "start": listing[0]["start_time"],
                  "end": listing[0]["end_time"]}
        clip = client.post(f"{url}/api/clips", json=chosen).json()
        wait_for(lambda: client.get(f"{url}/api/clips/{clip['id']}").json()["status"] == "ready",
                 what="the clip")
        assert client.get(url + clip["url"], headers={"Range": "bytes=0-99"}).status_code == 206
        assert client.post(f"{url}/api/clips", json=chosen).status_code == 200
        assert client.post(f"{url}/api/cleanup/run?dry_run=true").status_code == 200
        assert client.delete(recording).status_code == 200
        for name in ("cam", "mixed", "ws"):
            assert client.delete(f"{url}/api/streams/{name}").status_code == 200
