"""Latency of a viewer on another node (through Redis) against one on the publishing node.

    python -m bench.cluster_latency [--seconds 20] [--fps 30]

Starts ``redis-server`` on a unix socket and two servers (recording off) joined through
it, publishes one 640x480 stream to node A with bench/clients.py's ``post_publisher``
and opens one ``ViewerProtocol`` viewer on A and one on B; each records, per frame, the
time from the publisher's send to its arrival (the frame carries its send time). Prints
p50/p99 of both. Loopback, one machine: both nodes, Redis and the clients share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.clients import Counters, Window, open_viewer, post_publisher  # noqa: E402
from bench.redis_bus import start_redis  # noqa: E402
from helpers import ServerProcess, make_jpeg  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 2 else float("nan")


async def measure(a: ServerProcess, b: ServerProcess, seconds: float, fps: float) -> tuple:
    jpeg = make_jpeg(640, 480)
    local, remote, pub = Counters(), Counters(), Counters()
    start = time.monotonic() + 3
    for c in (local, remote, pub):
        c.window = Window(start, start + seconds)
        c.stop_at = start + seconds + 0.5
    publisher = asyncio.create_task(post_publisher("127.0.0.1", a.port, "lat", jpeg, fps, pub, 0))
    await asyncio.sleep(1)  # the stream exists on A and is announced
    viewers = [await open_viewer("127.0.0.1", a.port, "lat", local),
               await open_viewer("127.0.0.1", b.port, "lat", remote)]
    await publisher
    for transport in viewers:
        transport.close()
    return local, remote


def run(tmp: Path, seconds: float, fps: float) -> dict:
    """Redis and two nodes in ``tmp``; p50/p99 (ms) of the local and the remote viewer."""
    tmp.mkdir(parents=True, exist_ok=True)
    redis, sock = start_redis(tmp)
    config = {"cluster": {"redis_url": f"unix://{sock}"}, "recording": {"enabled": False}}
    nodes = [ServerProcess(tmp / f"node{i}", config) for i in range(2)]
    try:
        for node in nodes:
            node.start()
        local, remote = asyncio.run(measure(*nodes, seconds, fps))
    finally:
        for node in nodes:
            node.stop()
        redis.terminate()
        redis.wait(10)
    return {
        name: {"frames": c.received, "p50_ms": pct(c.latencies, 50),
               "p99_ms": pct(c.latencies, 99), "skipped": c.skipped, "errors": c.errors[:2]}
        for name, c in (("local", local), ("remote", remote))
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fps", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-latency-") as name:
        result = run(Path(name), args.seconds, args.fps)
    for label, key in (("local viewer (node A)", "local"), ("cross-node viewer (node B)", "remote")):
        c = result[key]
        print(f"{label}: {c['frames']} frames, p50 {c['p50_ms']:.2f} ms, "
              f"p99 {c['p99_ms']:.2f} ms, skipped {c['skipped']}, errors {c['errors']}")


if __name__ == "__main__":
    main()
