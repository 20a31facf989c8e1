"""The cluster in ``make bench``: ``serve --workers 2`` against one process, and the
latency a viewer on another node adds (both through a real ``redis-server``).

The longer, standalone versions are ``python -m bench.workers`` and
``python -m bench.cluster_latency``; this runs one stream count and one latency window.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import cluster_latency, workers
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
    return (f"{result['streams']} streams: 1 process {one['accepted_fps']:.0f} frames/s, "
            f"2 workers {two['accepted_fps']:.0f} ({two['accepted_fps'] / one['accepted_fps']:.2f}×) | "
            f"p99 local {lat['local']['p99_ms']:.1f} ms, cross-node {lat['remote']['p99_ms']:.1f} ms")


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        print(line(measure(Path(tmp))))


if __name__ == "__main__":
    main()
