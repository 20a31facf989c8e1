"""Run one load (S streams × V viewers at F fps) against a running server and measure it."""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from dataclasses import dataclass

from .clients import PUBLISHERS, Counters, HttpConnection, open_viewer
from .procstat import CpuWindow, memory_kb
from .protocol import ProtocolError
from .servers import BenchServer


@dataclass
class Load:
    """What to send and how many watch it."""

    streams: int
    viewers: int = 1  # per stream
    fps: float = 30.0  # per stream; 0 = as fast as the connection goes
    size: str = "640x480"
    ingest: str = "post"  # post | mpjpeg | ws
    seconds: float = 5.0  # measured window
    warmup: float = 1.0
    count_only: bool = False  # viewers count bytes instead of parsing (fan-out ceiling)
    # Server on core 0, load generator on the others (latency scenarios; see scenarios.py).
    pinned: bool = False


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank, or ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def _server_frames(conn: HttpConnection, prefix: str) -> tuple[int, float] | None:
    """Frames the server counted on this run's streams (from ``/api/streams``), and when:
    the middle of the request, which takes a while on a busy server."""
    sent = time.monotonic()
    try:
        status, body = await conn.get_json("/api/streams")
    except (OSError, asyncio.IncompleteReadError):
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    frames = sum(
        s.get("total_frames", 0) for s in body.get("streams", []) if s["name"].startswith(prefix)
    )
    return frames, (sent + time.monotonic()) / 2


async def _recorder_dropped(conn: HttpConnection, prefix: str) -> int | None:
    """Frames our recorder dropped on this run's streams (``/metrics``; ``None`` elsewhere)."""
    head = f"GET /metrics HTTP/1.1\r\nHost: {conn.host}\r\n\r\n".encode()
    try:
        response, body = await conn.request(head)
    except (OSError, asyncio.IncompleteReadError, ProtocolError):
        return None
    if response.status != 200:
        return None
    marker = f'_recording_frames_dropped_total{{stream="{prefix}_'
    total = None
    for line in body.decode("utf-8", "replace").splitlines():
        if marker in line:
            total = (total or 0) + int(float(line.rsplit(" ", 1)[1]))
    return total


async def run_load(server: BenchServer, load: Load, jpeg: bytes) -> dict:
    """Drive ``load`` against ``server``; returns the measured numbers."""
    c = Counters()
    host, port = server.host, server.port
    prefix = f"b{random.randrange(1 << 30):x}"
    names = [f"{prefix}_{i}" for i in range(load.streams)]
    publisher = PUBLISHERS[load.ingest]
    span = 1.0 / load.fps if load.fps else 0.0
    tasks = [
        asyncio.create_task(
            publisher(host, port, n, jpeg, load.fps, c, random.uniform(0, span))
        )
        for n in names
    ]
    api = HttpConnection(host, port)
    await _wait_for_streams(api, prefix, load.streams, timeout=5 + load.streams / 100)
    transports = []
    for name in names:
        for _ in range(load.viewers):
            try:
                transports.append(await open_viewer(host, port, name, c, load.count_only))
            except OSError as exc:
                c.error(f"viewer connect: {exc!r}")
    await asyncio.sleep(load.warmup)
    gc.collect()
    gc.freeze()  # a full collection of the load generator's objects would show as latency
    cpu = CpuWindow(server.proc.pid)
    before = await _server_frames(api, prefix)
    c.window.start = time.monotonic()
    c.window.end = c.window.start + load.seconds
    cpu.begin()
    await asyncio.sleep(load.seconds)
    elapsed = cpu.end()
    after = await _server_frames(api, prefix)
    dropped = await _recorder_dropped(api, prefix) if server.record else None
    c.stop_at = 0.0
    await asyncio.wait(tasks, timeout=10)
    for transport in transports:
        transport.close()
    api.close()
    await asyncio.sleep(0.1)
    result = _summarise(load, c, cpu, elapsed, before, after, server)
    # The recorder keeping up is part of "recording on": frames it dropped since the
    # streams started, over every frame the server accepted since then.
    total = after[0] if after else None
    result["recorder_dropped_pct"] = 100 * dropped / total if dropped is not None and total else None
    return result


async def _wait_for_streams(api: HttpConnection, prefix: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = await api.get_json("/api/streams")
        except (OSError, asyncio.IncompleteReadError):
            status, body = 0, None
        if status == 200 and isinstance(body, dict):
            live = [s for s in body.get("streams", []) if s["name"].startswith(prefix)]
            if len(live) >= count and all(s.get("total_frames", 0) > 0 for s in live):
                return
        await asyncio.sleep(0.2)


def _summarise(load, c: Counters, cpu, elapsed, before, after, server) -> dict:
    expected = load.streams * load.fps * elapsed if load.fps else None
    if load.ingest == "post":
        accepted = c.accepted
    elif before is not None and after is not None:
        # Server-counted, between the two reads: scaled to the measured window.
        counted, span = after[0] - before[0], after[1] - before[1]
        accepted = counted * elapsed / span if span > 0 else None
    else:
        accepted = None
    mem = memory_kb(server.proc.pid)
    views = load.streams * load.viewers
    ms = [x * 1000 for x in c.latencies]
    return {
        "streams": load.streams,
        "viewers": load.viewers,
        "fps": load.fps,
        "ingest": load.ingest,
        "seconds": round(elapsed, 2),
        "sent_fps": c.sent / elapsed,
        "accepted_fps": accepted / elapsed if accepted is not None else None,
        "accepted_pct": 100 * accepted / expected if expected and accepted is not None else None,
        "view_fps": c.received / elapsed / views if views and not load.count_only else None,
        "view_pct": (
            100 * c.received / (expected * load.viewers)
            if expected and views and not load.count_only
            else None
        ),
        "skipped": c.skipped,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "fanout_bytes_per_s": c.bytes_received / elapsed if load.count_only else None,
        "server_cores": cpu.server_cores,
        "loadgen_cores": cpu.loadgen_cores,
        "other_cores": cpu.other_cores,
        "server_kernel_pct": 100 * cpu.server_system_share,
        "server_peak_rss_mb": mem.get("VmHWM", 0) / 1024,
        "rejected": c.rejected,
        "errors": c.errors[:5],
        "error_count": len(c.errors),
    }
