"""The cluster in ``make bench``, through a real ``redis-server``:

- capacity: the most streams at 30 fps that ``serve --workers 2`` and one process each
  take at ≥ 95 %, single-frame POSTs sent by h2load (bench/h2publish.py);
- viewers on the other worker: 120 streams with one viewer each (Python load generator),
  for the CPU that Redis and the servers spend on frames that cross between workers;
- the latency a viewer on another node adds.

The standalone versions are ``python -m bench.h2publish``, ``python -m bench.workers``
and ``python -m bench.cluster_latency``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import cluster_latency, h2publish, workers
from .frames import camera_jpeg
from .load import Load
from .servers import BenchServer


def measure(tmp: Path, streams: int = 120, seconds: float = 6.0) -> dict:
    """Both measurements, or why they could not run."""
    if shutil.which("redis-server") is None:
        return {"available": False, "why": "redis-server is not installed"}
    directory = tmp / "cluster"
    directory.mkdir()
    redis, url = workers.start_redis(directory)
    try:
        out: dict = {"available": True, "streams": streams, "setups": {}}
        why = h2publish.why_not()
        out["capacity"] = {"available": why is None, "why": why}
        if why is None:
            one = h2publish.ceiling("1 process", 1, "", None, list(range(160, 1000, 20)),
                                    directory, seconds)
            start = max(one["streams"] + 20, 160)
            two = h2publish.ceiling("2 workers", 2, url, redis.pid, list(range(start, 1400, 20)),
                                    directory, seconds)
            out["capacity"].update({"1 process": one, "2 workers": two})
        load = Load(streams=streams, viewers=1, fps=30, seconds=seconds)
        jpeg = camera_jpeg(640, 480)
        for setup, count, redis_url in (("1 process", 1, ""), ("2 workers", 2, url)):
            with BenchServer("ours", directory / setup.replace(" ", "-"), record=False,
                             workers=count, redis_url=redis_url) as server:
                out["setups"][setup] = workers.measure(
                    server, load, jpeg, redis.pid if redis_url else None, quiet=True
                )
        out["latency"] = cluster_latency.run(directory / "latency", seconds=seconds, fps=30)
        return out
    finally:
        redis.kill()
        redis.wait()


def line(result: dict) -> str:
    """One line for the console."""
    if not result.get("available"):
        return f"not run: {result.get('why')}"
    one, two = result["setups"]["1 process"], result["setups"]["2 workers"]
    lat = result["latency"]
    cap = result["capacity"]
    capacity = (f"capacity (h2load, ≥ 95 %): 1 process {cap['1 process']['streams']} streams, "
                f"2 workers {cap['2 workers']['streams']} | " if cap["available"]
                else f"capacity not run: {cap['why']} | ")
    return (capacity + f"{result['streams']} streams with viewers: 1 process "
            f"{one['accepted_fps']:.0f} frames/s, "
            f"2 workers {two['accepted_fps']:.0f} ({two['accepted_fps'] / one['accepted_fps']:.2f}×) | "
            f"p99 local {lat['local']['p99_ms']:.1f} ms, cross-node {lat['remote']['p99_ms']:.1f} ms")


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        print(line(measure(Path(tmp))))


if __name__ == "__main__":
    main()
