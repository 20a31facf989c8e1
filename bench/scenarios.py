"""The standard scenarios of ``make bench``: each runs against ours and the baseline."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from .clients import Counters, ProtocolError, mpjpeg_publisher, ws_connect
from .frames import SIZES, camera_jpeg
from .load import Load, run_load
from .servers import BenchServer

_JPEGS: dict[str, bytes] = {}


def jpeg_for(size: str) -> bytes:
    """The benchmark JPEG of a size (made once)."""
    if size not in _JPEGS:
        _JPEGS[size] = camera_jpeg(*SIZES[size])
    return _JPEGS[size]


def split_cores() -> tuple[set[int], set[int]] | None:
    """(server cores, load-generator cores) for a pinned run, or ``None`` on one core.

    Unpinned, the kernel often runs the load generator on the server's core right
    after the server's write wakes it, so the two take turns: with 100 viewers the
    latency of a frame then includes the load generator parsing the other 99 parts
    (S=1 × 100 p50 3.3 ms unpinned, 2.1 ms pinned, same server). Viewers on other
    machines, as in real use, never queue behind the server like that.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


def measure(kind: str, load: Load, tmp: Path, record: bool = True) -> dict:
    """Start a fresh server of ``kind``, run ``load``, stop it; returns the numbers."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=tmp))
    split = split_cores() if load.pinned else None
    mine = os.sched_getaffinity(0)
    with BenchServer(kind, workdir, record=record, cpus=split and split[0]) as server:
        if split:
            os.sched_setaffinity(0, split[1])
        try:
            result = asyncio.run(run_load(server, load, jpeg_for(load.size)))
        finally:
            os.sched_setaffinity(0, mine)
        result["recorded_mb"] = server.recorded_bytes() / 1e6
    result["kind"] = kind
    result["record"] = record
    result["pinned"] = bool(split)
    return result


def ceiling(kind: str, ingest: str, steps: list[int], tmp: Path, seconds: float = 4.0) -> dict:
    """The most streams at 30 fps whose frames the server accepts ≥95 % of (no viewers),
    with its recorder dropping ≤5 % of them (where the server reports drops)."""
    best, tried = None, []
    for streams in steps:
        load = Load(streams, viewers=0, ingest=ingest, seconds=seconds, warmup=0.5)
        result = measure(kind, load, tmp)
        tried.append(result)
        dropped = result.get("recorder_dropped_pct")
        if (result["accepted_pct"] or 0) < 95 or (dropped is not None and dropped > 5):
            break
        best = result
    return {"kind": kind, "ingest": ingest, "best": best, "steps": tried}


def single_connection_fps(kind: str, ingest: str, tmp: Path, seconds: float = 3.0) -> dict:
    """Frames/s one unpaced publisher gets through (server-counted)."""
    load = Load(1, viewers=0, fps=0, ingest=ingest, seconds=seconds, warmup=0.5)
    return measure(kind, load, tmp)


def ingest_available(kind: str, ingest: str, tmp: Path) -> tuple[bool, str]:
    """Whether the server has long-lived ingest of this kind (probed, never assumed)."""
    if ingest == "post":
        return True, ""
    workdir = Path(tempfile.mkdtemp(prefix=f"probe-{kind}-", dir=tmp))
    with BenchServer(kind, workdir, record=False) as server:
        return asyncio.run(_probe(server, ingest))


async def _probe(server: BenchServer, ingest: str) -> tuple[bool, str]:
    from .clients import HttpConnection

    if ingest == "ws":
        try:
            _, writer = await ws_connect(server.host, server.port, "probe_ws")
        except (OSError, ProtocolError) as exc:
            return False, str(exc)
        writer.close()
        return True, ""
    c = Counters()
    c.stop_at = time.monotonic() + 0.3
    await mpjpeg_publisher(server.host, server.port, "probe_mp", jpeg_for("640x480"), 30, c, 0)
    conn = HttpConnection(server.host, server.port)
    status, body = await conn.get_json("/api/streams/probe_mp/stats")
    conn.close()
    frames = body.get("total_frames", 0) if isinstance(body, dict) else 0
    if status == 200 and frames >= 3:
        return True, ""
    return False, f"a chunked multipart/x-mixed-replace POST published {frames} frames"
