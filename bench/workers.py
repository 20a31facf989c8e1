"""``serve --workers 2`` (sharing streams through Redis) against one process: single-frame
POSTs at 30 fps per stream, one viewer per stream, everything on this machine.

    python -m bench.workers --streams 60 120 --seconds 10 --runs 2

Each stream's publisher keeps one connection, so the kernel (SO_REUSEPORT) puts each
stream on one worker; a viewer may land on the other and is then fed through Redis.
CPU is read from /proc for every server process, redis-server and this process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .frames import camera_jpeg
from .load import Load, run_load
from .procstat import cpu_seconds, machine_busy_seconds, self_cpu_seconds
from .servers import BenchServer


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ping = subprocess.run(["redis-cli", "-s", str(sock), "PING"], capture_output=True, text=True)
        if ping.stdout.strip() == "PONG":
            return proc, f"unix://{sock}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def measure(server: BenchServer, load: Load, jpeg: bytes, redis_pid: int | None,
            quiet: bool = False) -> dict:
    pids = server.pids()
    watched = pids + ([redis_pid] if redis_pid else [])
    before = {pid: cpu_seconds(pid) for pid in watched}
    self0, busy0, t0 = self_cpu_seconds(), machine_busy_seconds(), time.monotonic()
    result = asyncio.run(run_load(server, load, jpeg))
    if redis_pid and not quiet:  # the cluster counters of each worker (a new connection per scrape)
        import urllib.request

        for _ in range(2):
            with urllib.request.urlopen(f"http://{server.host}:{server.port}/metrics") as r:
                lines = [l for l in r.read().decode().splitlines()
                         if l.startswith("robogpt_video_cluster_") and "_total" in l]
            print("   ", " ".join(l.replace("robogpt_video_cluster_", "") for l in lines))
    elapsed = time.monotonic() - t0
    used = {pid: cpu_seconds(pid) - before[pid] for pid in watched}
    # The whole run (warm-up included): the share of a core each part used.
    result["cores_servers"] = sum(used[p] for p in pids) / elapsed
    result["cores_redis"] = used[redis_pid] / elapsed if redis_pid else 0.0
    result["cores_loadgen"] = (self_cpu_seconds() - self0) / elapsed
    result["cores_machine"] = (machine_busy_seconds() - busy0) / elapsed
    accepted = result["accepted_fps"] or 0
    result["redis_us_per_frame"] = 1e6 * result["cores_redis"] / accepted if accepted else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[60, 120])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    jpeg = camera_jpeg(640, 480)
    with tempfile.TemporaryDirectory() as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            print("run streams setup        accepted/s  %    view %  p50 ms  p99 ms  "
                  "servers redis loadgen machine (cores)")
            for run in range(args.runs):
                for streams in args.streams:
                    load = Load(streams=streams, viewers=1, fps=30, seconds=args.seconds)
                    for setup, workers, redis_url in (
                        ("1 process", 1, ""), (f"{args.workers} workers", args.workers, url)
                    ):
                        workdir = Path(tmp) / f"{setup.replace(' ', '-')}-{streams}-{run}"
                        with BenchServer("ours", workdir, record=False, workers=workers,
                                         redis_url=redis_url) as server:
                            r = measure(server, load, jpeg, redis.pid if redis_url else None)
                        print(f"{run:3d} {streams:7d} {setup:11s} {r['accepted_fps']:9.0f} "
                              f"{r['accepted_pct']:5.1f} {r['view_pct'] or 0:6.1f} "
                              f"{r['p50_ms'] or 0:7.1f} {r['p99_ms'] or 0:7.1f}  "
                              f"{r['cores_servers']:6.2f} {r['cores_redis']:5.2f} "
                              f"{r['cores_loadgen']:7.2f} {r['cores_machine']:7.2f}", flush=True)
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
