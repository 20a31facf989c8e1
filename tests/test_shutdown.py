"""SIGTERM/SIGINT on a real server with viewers connected and frames flowing."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import av
import httpx
import pytest

from helpers import iter_parts, make_jpeg, publish
from robogpt_video.config import Settings
from robogpt_video.errors import ApiError
from robogpt_video.runtime import Runtime

STOP_WITHIN = 10.0  # seconds: the brief's bound, well above what it takes here


class Publisher(threading.Thread):
    """Publishes frames as fast as the server takes them until told to stop or refused."""

    def __init__(self, url: str, name: str):
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        frames = [make_jpeg(seed=i) for i in range(8)]
        with httpx.Client(timeout=5) as client:
            while not self.stop_event.is_set():
                try:
                    response = publish(self.url, self.name, frames[self.sent % 8], client)
                    if response.status_code == 200:
                        self.sent += 1
                except httpx.HTTPError:
                    return  # the server has gone: that is the point of the test
                time.sleep(0.01)


class Viewer(threading.Thread):
    """Reads ``/stream/<name>`` to its end, noting how the response ended."""

    def __init__(self, url: str, name: str):
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.frames = 0
        self.first_frame = threading.Event()
        self.ended_cleanly = False
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", f"{self.url}/stream/{self.name}", timeout=20) as response:
                assert response.status_code == 200
                for _headers, _jpeg in iter_parts(response.iter_bytes()):
                    self.frames += 1
                    self.first_frame.set()
            self.ended_cleanly = True  # the body finished (final chunk), not a reset
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def check_recordings(root) -> int:
    """Every sidecar is closed and every recording decodes; returns how many were checked."""
    checked = 0
    for sidecar in sorted(root.rglob("*.json")):
        meta = json.loads(sidecar.read_text())
        assert meta.get("status") != "recording", f"{sidecar} left open: {meta}"
        assert meta.get("end_time"), f"{sidecar} has no end_time: {meta}"
        video = sidecar.with_suffix(".mp4")
        assert video.exists(), f"{sidecar} has no video beside it"
        with av.open(str(video)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded > 0, f"{video} holds no decodable frame"
        assert decoded >= meta["total_frames"], (decoded, meta)
        checked += 1
    return checked


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_viewers_closes_recordings_and_exits_0(start_server, sig):
    server = start_server({"recording": {"enabled": True}})
    publisher = Publisher(server.url, "cam")
    publisher.start()
    deadline = time.monotonic() + 10
    while publisher.sent == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    viewers = [Viewer(server.url, "cam") for _ in range(2)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        assert viewer.first_frame.wait(10), "viewer got no frame before the signal"

    started = time.monotonic()
    server.proc.send_signal(sig)
    code = server.proc.wait(STOP_WITHIN + 5)
    took = time.monotonic() - started
    publisher.stop_event.set()
    publisher.join(10)
    for viewer in viewers:
        viewer.join(10)

    assert code == 0, server.output()
    assert took < STOP_WITHIN, f"shutdown took {took:.1f} s"
    for viewer in viewers:
        assert not viewer.is_alive()
        assert viewer.error is None, repr(viewer.error)
        assert viewer.ended_cleanly and viewer.frames >= 1
    log = server.output()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.index("shutting down: ending live responses") < log.index("robogpt-video stopped")
    assert check_recordings(server.recordings) >= 1


def test_sigterm_on_idle_server_exits_0(server):
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < STOP_WITHIN


@pytest.mark.parametrize("query", ["", "?width=1200&quality=100"])  # plain, or a variant's
def test_sigterm_with_a_viewer_that_reads_nothing_still_exits_0_in_time(start_server, query):
    server = start_server()
    big = make_jpeg(1280, 960, seed=3, quality=95)
    with httpx.Client(timeout=10) as client:
        assert publish(server.url, "cam", big, client).status_code == 200
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(f"GET /stream/cam{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for seed in range(40):  # fill the stuck viewer's socket buffers; it never reads
            publish(server.url, "cam", make_jpeg(1280, 960, seed=seed, quality=95), client)
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(STOP_WITHIN + 5)
        took = time.monotonic() - started
    finally:
        stuck.close()
    assert code == 0, server.output()
    assert took < STOP_WITHIN, f"shutdown took {took:.1f} s"
    log = server.output()
    assert "Traceback" not in log and " ERROR " not in log, log  # the stuck viewer was cut off


def test_begin_shutdown_runs_callbacks_once_and_refuses_new_streams():
    calls = []

    async def ending_ingest():
        calls.append("async")

    def broken():
        raise RuntimeError("a broken callback must not stop the others")

    async def scenario():
        runtime = Runtime(Settings())
        await runtime.start()
        stream = runtime.registry.get_or_create("cam")
        runtime.on_shutdown += [broken, ending_ingest, lambda: calls.append("sync")]
        await runtime.begin_shutdown()
        await runtime.begin_shutdown()
        assert stream.closed and runtime.registry.get("cam") is None
        with pytest.raises(ApiError) as refused:
            runtime.registry.get_or_create("cam")
        assert (refused.value.status_code, refused.value.code) == (503, "shutting_down")
        await runtime.stop()

    asyncio.run(scenario())
    assert calls == ["async", "sync"]
