"""Viewer-chosen rate and size: what ``?width=320&quality=60&fps=10`` costs and saves.

One server (ours, recording off), one 640x480 stream at 30 fps per phase, ``VIEWERS``
viewers per phase, each phase on a fresh stream of the same server:

- ``plain``: ``GET /stream/<name>`` (every frame, as published);
- ``fps10``: ``?fps=10`` (the cap alone: the same JPEGs, a third of them);
- ``w320q60fps10``: ``?width=320&quality=60&fps=10`` (a shared variant: resized and
  re-encoded once per frame in a worker thread, then capped per viewer).

Reported per phase: bytes and frames each viewer received per second, and the
server's CPU per published frame (all of its threads, from /proc). For the variant,
also the worker-thread CPU per encoded frame (``robogpt_video_stream_variant_encode_
seconds_total`` over ``..._frames_encoded_total``). ``python -m bench.variants``
prints them.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from .clients import Counters, HttpConnection, post_publisher, request_head
from .frames import camera_jpeg
from .procstat import CpuWindow
from .servers import BenchServer

VIEWERS = 10
FPS = 30.0
PHASES = (
    ("plain", ""),
    ("fps10", "?fps=10"),
    ("w320q60fps10", "?width=320&quality=60&fps=10"),
)


class PartCounter(asyncio.Protocol):
    """Counts the bytes and the MJPEG parts (boundary lines) a viewer receives."""

    MARK = b"--frame\r\n"

    def __init__(self, c: Counters):
        self.c = c
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        if time.monotonic() in self.c.window:
            self.c.bytes_received += len(data)
            self.c.received += (self.tail + data).count(self.MARK)
        self.tail = data[-(len(self.MARK) - 1):]


async def _metric(conn: HttpConnection, name: str, stream: str) -> float:
    head = f"GET /metrics HTTP/1.1\r\nHost: {conn.host}\r\n\r\n".encode()
    _, body = await conn.request(head)
    found = re.search(rf'^{name}{{stream="{stream}"}} (\S+)$'.encode(), body, re.M)
    return float(found[1]) if found else 0.0


async def _phase(server: BenchServer, jpeg: bytes, label: str, query: str, secs: float) -> dict:
    c = Counters()
    name = f"var_{label}"
    publisher = asyncio.create_task(
        post_publisher(server.host, server.port, name, jpeg, FPS, c, 0.0)
    )
    api = HttpConnection(server.host, server.port)
    while (await api.get_json(f"/api/streams/{name}/stats"))[0] != 200:
        await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(VIEWERS):
        transport, _ = await loop.create_connection(
            lambda: PartCounter(c), server.host, server.port
        )
        transport.write(request_head("GET", f"/stream/{name}{query}", server.host, {}))
        transports.append(transport)
    await asyncio.sleep(1.0)  # warm-up
    encoded0 = await _metric(api, "robogpt_video_stream_variant_frames_encoded_total", name)
    encode_s0 = await _metric(api, "robogpt_video_stream_variant_encode_seconds_total", name)
    cpu = CpuWindow(server.proc.pid)
    c.window.start = time.monotonic()
    c.window.end = c.window.start + secs
    cpu.begin()
    await asyncio.sleep(secs)
    elapsed = cpu.end()
    encoded = await _metric(api, "robogpt_video_stream_variant_frames_encoded_total", name)
    encode_s = await _metric(api, "robogpt_video_stream_variant_encode_seconds_total", name)
    c.stop_at = 0.0
    await asyncio.wait([publisher], timeout=10)
    for transport in transports:
        transport.close()
    api.close()
    published = c.accepted
    frames = encoded - encoded0
    return {
        "phase": label,
        "query": query,
        "viewers": VIEWERS,
        "published_fps": published / elapsed,
        "viewer_frames_per_s": c.received / elapsed / VIEWERS,
        "viewer_bytes_per_s": c.bytes_received / elapsed / VIEWERS,
        "server_cores": cpu.server_cores,
        "server_us_per_frame": 1e6 * cpu.server_cores * elapsed / published if published else None,
        "frames_encoded_per_s": frames / elapsed,
        "encode_us_per_frame": 1e6 * (encode_s - encode_s0) / frames if frames else None,
        "other_cores": cpu.other_cores,
    }


async def _run(server: BenchServer, secs: float) -> list[dict]:
    jpeg = camera_jpeg(640, 480)
    return [await _phase(server, jpeg, label, query, secs) for label, query in PHASES]


def measure(tmp: Path, secs: float = 5.0) -> dict:
    """Run the three phases on one fresh server; returns their numbers."""
    workdir = Path(tempfile.mkdtemp(prefix="variants-", dir=tmp))
    with BenchServer("ours", workdir, record=False) as server:
        phases = asyncio.run(_run(server, secs))
    return {"viewers": VIEWERS, "fps": FPS, "size": "640x480", "phases": phases}


def line(result: dict) -> str:
    """One line for the console."""
    out = []
    for p in result["phases"]:
        us = p["server_us_per_frame"]
        out.append(
            f"{p['phase']}: {p['viewer_bytes_per_s'] / 1e3:,.0f} kB/s and "
            f"{p['viewer_frames_per_s']:.1f} frames/s per viewer, "
            f"{us:,.0f} µs server CPU per frame" if us is not None else f"{p['phase']}: –"
        )
    return " | ".join(out)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp), float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
    print(line(result))
    print(json.dumps(result, indent=1))
