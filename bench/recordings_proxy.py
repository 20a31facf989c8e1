"""Downloading a recording from the node that has it against through another node (proxied).

    python -m bench.recordings_proxy [--mb 200] [--runs 3]

Starts ``redis-server`` on a unix socket and two servers joined through it (recording
on, nothing published). A file of ``--mb`` MB of random bytes, named like a recording,
with a sidecar, is put in node A's recordings folder. Each run downloads it once from A
and once through B (``GET`` with httpx, streamed and discarded, one connection) and
prints the wall time, MB/s and the CPU seconds each server process used, and B's peak
RSS before and after (/proc). Loopback,
one machine: both nodes, Redis and the client share its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.procstat import cpu_seconds, memory_kb  # noqa: E402
from bench.redis_bus import start_redis  # noqa: E402
from helpers import ServerProcess, wait_for  # noqa: E402

NAME = "big_20260101_000000.mp4"


def download(url: str, nodes: list[ServerProcess]) -> tuple[float, int, list[float]]:
    before = [cpu_seconds(n.proc.pid) for n in nodes]
    began = time.perf_counter()
    size = 0
    with httpx.stream("GET", url, timeout=60) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_bytes(1 << 20):
            size += len(chunk)
    took = time.perf_counter() - began
    return took, size, [cpu_seconds(n.proc.pid) - b for n, b in zip(nodes, before)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recordings-proxy-") as name:
        tmp = Path(name)
        redis, sock = start_redis(tmp)
        config = {"cluster": {"redis_url": f"unix://{sock}"},
                  "recording": {"enabled": True, "codec": "mjpeg"}}
        nodes = [ServerProcess(tmp / f"node{i}", config) for i in range(2)]
        try:
            for node in nodes:
                node.start()
            a, b = nodes
            folder = a.recordings / "big"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / NAME, "wb") as out:
                for _ in range(args.mb):
                    out.write(os.urandom(1 << 20))
            (folder / NAME).with_suffix(".json").write_text(json.dumps(
                {"stream_name": "big", "start_time": "2026-01-01T00:00:00Z", "status": "complete"}))
            wait_for(lambda: len(httpx.get(f"{b.url}/api/recordings", timeout=10).json()["nodes"])
                     == 2, what="B to know A")
            peak = memory_kb(b.proc.pid)["VmHWM"]
            for run in range(args.runs):
                for label, node in (("from A (local)", a), ("through B (proxied)", b)):
                    took, size, cpu = download(f"{node.url}/api/recordings/big/{NAME}", nodes)
                    print(f"run {run + 1} {label}: {size / 1e6:.0f} MB in {took:.2f} s, "
                          f"{size / 1e6 / took:.0f} MB/s; CPU A {cpu[0]:.2f} s, B {cpu[1]:.2f} s")
            print(f"B's peak RSS: {peak / 1024:.0f} MB before, "
                  f"{memory_kb(b.proc.pid)['VmHWM'] / 1024:.0f} MB after")
        finally:
            for node in nodes:
                node.stop()
            redis.terminate()
            redis.wait(10)


if __name__ == "__main__":
    main()
