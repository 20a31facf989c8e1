"""Single-frame POST publishers driven by ``h2load`` (nghttp2's HTTP load generator, in C).

The Python load generator (bench/load.py) costs ≈50-70 µs of CPU per POST; on this
2-core machine that is half a core at 7,000 frames/s, which one server process already
takes, so two workers could not be shown to take more. h2load sends the same multipart
POSTs for ≈25-32 µs each (its CPU over the frames taken, in ``make bench``). It has no
per-stream pacing: ``clients`` keep-alive connections each send ``--rps`` requests a
second and walk the list of stream URLs in turn, so every stream gets ``fps`` frames a
second spread over the connections — what a load balancer in front of the cluster does
to single-frame POSTs (docs/cluster.md, "A stream published to two nodes"). No viewers:
frames stay on the node they were posted to.

h2load runs as SCHED_BATCH (``sched_setscheduler``; checked on each of its threads). As
an ordinary process its wakeups preempted the servers mid-request: two workers lost their
core 0.17-0.56 times per frame (one process, alone with h2load: 0.00) and spent 160-165 µs
of CPU per frame against 152-154 µs with h2load batched, which the row's
``server_preempted_per_frame`` shows (``--loadgen-policy other`` runs it the old way). The
same policy applies to both setups.

    python -m bench.h2publish --streams 200 260 --workers 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .clients import FORM_BOUNDARY, FORM_HEAD, FORM_TAIL
from .frames import camera_jpeg
from .procstat import cpu_seconds, machine_busy_seconds, preemptions
from .servers import BenchServer

CLIENTS = 50  # connections; each walks every stream's URL in turn
POLICIES = {"batch": os.SCHED_BATCH, "other": os.SCHED_OTHER}
WARMUP = 2  # s: streams created, connections warm (h2load --warm-up-time)


def why_not() -> str | None:
    """Why this load cannot run here, or None."""
    for tool, package in (("h2load", "nghttp2-client"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


def run(server: BenchServer, streams: int, fps: float, seconds: float, redis_pid: int | None,
        directory: Path, clients: int = CLIENTS, policy: int = os.SCHED_BATCH) -> dict:
    """``streams`` × ``fps`` POSTs for ``seconds`` after a warm-up, h2load scheduled with
    ``policy``; CPU read from /proc inside h2load's measured window."""
    body = directory / "frame.form"
    body.write_bytes(FORM_HEAD + camera_jpeg(640, 480) + FORM_TAIL)
    prefix = f"h{time.monotonic_ns() % 1_000_000:x}"
    urls = directory / "urls"
    urls.write_text("".join(f"http://{server.host}:{server.port}/publish/{prefix}_{i}\n"
                            for i in range(streams)))
    clients = min(clients, streams)
    duration = max(int(seconds), 2)
    h2load = subprocess.Popen(
        ["h2load", "--h1", "-c", str(clients), "--rps", f"{streams * fps / clients:.3f}",
         "-i", str(urls), "-d", str(body), "-D", str(duration), "--warm-up-time", str(WARMUP),
         "-H", f"Content-Type: multipart/form-data; boundary={FORM_BOUNDARY.decode()}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        os.sched_setscheduler(h2load.pid, policy, os.sched_param(0))
        time.sleep(WARMUP + 0.5)  # into h2load's measured window
        batch = all(os.sched_getscheduler(int(t.name)) == os.SCHED_BATCH
                    for t in os.scandir(f"/proc/{h2load.pid}/task"))
        pids = server.pids()
        watched = [*pids, h2load.pid, *([redis_pid] if redis_pid else [])]
        before = {pid: cpu_seconds(pid) for pid in watched}
        preempted0 = sum(preemptions(pid) for pid in pids)
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(duration - 1.0)
        elapsed = time.monotonic() - t0
        used = {pid: cpu_seconds(pid) - before[pid] for pid in watched}
        busy = machine_busy_seconds() - busy0
        preempted = sum(preemptions(pid) for pid in pids) - preempted0
        output = h2load.communicate(timeout=duration + 60)[0]
    finally:
        if h2load.poll() is None:
            h2load.kill()
            h2load.wait()
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", output)
    if codes is None or done is None:
        raise RuntimeError(f"h2load said: {output[-1500:]}")
    ok = int(codes[1])
    cores_servers = sum(used[p] for p in pids) / elapsed
    return {
        "streams": streams, "fps": fps, "clients": clients, "seconds": duration,
        "accepted_fps": ok / duration,
        "accepted_pct": 100 * ok / (streams * fps * duration),
        "refused": int(codes[3]) + int(codes[4]),
        "cores_servers": cores_servers,
        "cores_redis": used[redis_pid] / elapsed if redis_pid else 0.0,
        "cores_loadgen": used[h2load.pid] / elapsed,
        "cores_machine": busy / elapsed,
        "server_us_per_frame": 1e6 * cores_servers * duration / ok if ok else None,
        # how often per frame a server thread lost its core while it could still run
        "server_preempted_per_frame": preempted / (ok * elapsed / duration) if ok else None,
        "loadgen_batch": batch,
    }


def ceiling(setup: str, workers: int, redis_url: str, redis_pid: int | None, steps: list[int],
            directory: Path, seconds: float, fps: float = 30.0, quiet: bool = False,
            policy: int = os.SCHED_BATCH) -> dict:
    """The most streams (of ``steps``, rising) taken at ≥ 95 %; stops at the first count
    missed twice. A miss is run once more on a fresh server: single runs vary (one process
    took 220 streams at 85-88 % in one run and at 100 % in another, same build)."""
    rows = []
    for streams in steps:
        for attempt in (1, 2):
            workdir = directory / f"{setup.replace(' ', '-')}-{streams}-{attempt}"
            with BenchServer("ours", workdir, record=False, workers=workers,
                             redis_url=redis_url) as server:
                row = run(server, streams, fps, seconds, redis_pid, workdir, policy=policy)
            row["attempt"] = attempt
            rows.append(row)
            if not quiet:
                print(f"  {setup:10s} {streams:4d} streams: {row['accepted_fps']:7.0f} frames/s "
                      f"({row['accepted_pct']:5.1f} %)  servers {row['cores_servers']:.2f}  "
                      f"redis {row['cores_redis']:.2f}  h2load {row['cores_loadgen']:.2f}  "
                      f"machine {row['cores_machine']:.2f} cores  "
                      f"{row['server_us_per_frame'] or 0:.0f} µs/frame  "
                      f"preempted/frame {row['server_preempted_per_frame'] or 0:.2f}  "
                      f"h2load {'batch' if row['loadgen_batch'] else 'not batch'}", flush=True)
            if row["accepted_pct"] >= 95:
                break
        if row["accepted_pct"] < 95:
            break
    met = [r["streams"] for r in rows if r["accepted_pct"] >= 95]
    return {"rows": rows, "streams": max(met) if met else 0,
            "best_fps": max(r["accepted_fps"] for r in rows)}


def main() -> None:
    from .workers import start_redis

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[200, 260])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loadgen-policy", choices=sorted(POLICIES), default="batch",
                        help="h2load's scheduling policy (other: an ordinary process)")
    args = parser.parse_args()
    why = why_not()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            for streams in args.streams:
                for setup, workers, redis_url in (("1 process", 1, ""),
                                                  (f"{args.workers} workers", args.workers, url)):
                    ceiling(setup, workers, redis_url, redis.pid if redis_url else None,
                            [streams], Path(tmp), args.seconds,
                            policy=POLICIES[args.loadgen_policy])
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
