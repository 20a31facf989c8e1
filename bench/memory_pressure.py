"""Memory under pressure: publishers of very large frames, the server's RSS from /proc.

    .venv/bin/python bench/memory_pressure.py [--publishers 10] [--frame-mb 9.5]
        [--seconds 15] [--fps 3] [--stall] [--viewers 0] [--env NAME=VALUE ...]
        [--set section.key=value ...]

N publishers each POST one JPEG of ``--frame-mb`` MiB (random noise, padded to the
size with COM segments) ``--fps`` times a second for ``--seconds``, on keep-alive
connections, to a real server started here (``--set`` config keys, ``--env`` its
environment, e.g. ``MALLOC_MMAP_THRESHOLD_=1048576``). ``--stall`` puts the
recordings on an ext4 image that is frozen (``fsfreeze``, root only) while the
publishers run, so every frame stays queued until the caps drop it: the worst case
for memory; it is thawed when they stop. ``--viewers`` MJPEG viewers per stream read
as fast as they can.

The server's VmHWM (peak RSS) and VmRSS are read from /proc/<pid>/status: the peak
while publishing, then VmRSS once the disk queue has drained (streams still alive,
each holding its latest frame), and again after the streams are deleted. Not a test:
numbers only (tests/test_memory.py asserts the issue's bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import simplejpeg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import cpu_seconds, memory_kb  # noqa: E402
from bench.servers import REPO, listening_port  # noqa: E402

MIB = 1024 * 1024


def big_jpeg(size: int, seed: int) -> bytes:
    """A valid JPEG of exactly ``size`` bytes: noise, then COM segments after SOI."""
    rng = np.random.default_rng(seed)
    pixels = int(size / 2.1)  # noise at quality 90 takes ≈1.9 bytes a pixel
    width = int((pixels * 4 / 3) ** 0.5) // 16 * 16
    height = width * 3 // 4
    while True:
        jpeg = simplejpeg.encode_jpeg(
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8), quality=90
        )
        if len(jpeg) <= size - 4:
            break
        width, height = width - 64, (width - 64) * 3 // 4
    missing = size - len(jpeg)
    segments = []
    while missing:
        body = min(missing - 4, 65533)
        if 0 < missing - (body + 4) < 4:  # leave room for one more whole segment
            body -= 4
        segments.append(b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"\0" * body)
        missing -= body + 4
    padded = jpeg[:2] + b"".join(segments) + jpeg[2:]
    assert len(padded) == size
    return padded


class Server:
    """``robogpt-video serve`` with a config of our own, in a temp directory."""

    def __init__(self, workdir: Path, recordings: Path, settings: dict, env: dict):
        self.workdir = workdir
        config = {
            "server": {"host": "127.0.0.1", "port": 0},
            "recording": {"directory": str(recordings)},
            "logging": {"level": "WARNING", "file": str(workdir / "server.log")},
        }
        for key, value in settings.items():
            section, name = key.split(".", 1)
            config.setdefault(section, {})[name] = yaml.safe_load(value)
        self.config = workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOGPT_")}
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robogpt_video", "serve", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=open(self.workdir / "server.out", "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "server.out").read_text())
            port = listening_port(self.proc.pid)
            if port:
                self.url = f"http://127.0.0.1:{port}"
                try:
                    urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def memory(self) -> dict[str, int]:
        return memory_kb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples in /metrics (0 if absent)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def publisher(url: str, name: str, jpeg: bytes, fps: float, stop: threading.Event,
              counts: dict) -> None:
    headers = {"Content-Type": "image/jpeg"}
    with httpx.Client(timeout=60) as client:
        due = time.monotonic()
        while not stop.is_set():
            response = client.post(f"{url}/publish/{name}", content=jpeg, headers=headers)
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            due += 1 / fps
            stop.wait(max(0.0, due - time.monotonic()))


def viewer(url: str, name: str, stop: threading.Event) -> None:
    try:
        with httpx.Client(timeout=60) as client:
            with client.stream("GET", f"{url}/stream/{name}") as response:
                for _ in response.iter_raw(1 << 20):
                    if stop.is_set():
                        return
    except httpx.HTTPError:
        pass


class Freezer:
    """An ext4 image on a loop device, frozen on demand (root only)."""

    def __init__(self, root: Path):
        self.image, self.mount = root / "disk.img", root / "disk"
        self.mount.mkdir()
        with open(self.image, "wb") as fh:
            fh.truncate(4096 * MIB)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True)
        self.frozen = False

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "-f", str(self.mount)], check=True)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            subprocess.run(["fsfreeze", "-u", str(self.mount)], check=True)
            self.frozen = False

    def close(self) -> None:
        self.thaw()
        if subprocess.run(["umount", str(self.mount)]).returncode:
            subprocess.run(["umount", "-l", str(self.mount)])


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="memory-pressure-") as tmp:
        root = Path(tmp)
        freezer = Freezer(root) if args.stall else None
        recordings = (freezer.mount if freezer else root) / "recordings"
        env = dict(item.split("=", 1) for item in args.env)
        settings = dict(item.split("=", 1) for item in args.set)
        server = Server(root, recordings, settings, env)
        try:
            server.start()
            return measure(server, freezer, args)
        finally:
            if freezer is not None:
                freezer.thaw()
            server.stop()
            if freezer is not None:
                freezer.close()


def measure(server: Server, freezer: Freezer | None, args) -> dict:
    size = int(args.frame_mb * MIB)
    jpegs = [big_jpeg(size, seed) for seed in range(args.publishers)]
    names = [f"big{i}" for i in range(args.publishers)]
    idle = server.memory()
    stop, counts = threading.Event(), {}
    threads = [threading.Thread(target=viewer, args=(server.url, n, stop), daemon=True)
               for n in names for _ in range(args.viewers)]
    threads += [
        threading.Thread(target=publisher, args=(server.url, n, j, args.fps, stop, counts))
        for n, j in zip(names, jpegs)
    ]
    if freezer is not None:
        freezer.freeze()
    cpu0 = cpu_seconds(server.proc.pid)
    for thread in threads:
        thread.start()
    highest_rss = 0
    queued_max = 0.0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        highest_rss = max(highest_rss, server.memory()["VmRSS"])
        queued_max = max(queued_max, metric(server.url, "robogpt_video_recording_queue_bytes"))
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(60)
    peak = server.memory()["VmHWM"]
    cpu = cpu_seconds(server.proc.pid) - cpu0
    if freezer is not None:
        freezer.thaw()
    drain_deadline = time.monotonic() + 120
    while metric(server.url, "robogpt_video_recording_queue_bytes") and time.monotonic() < drain_deadline:
        time.sleep(0.2)
    time.sleep(args.settle)
    drained = server.memory()["VmRSS"]
    dropped = metric(server.url, "robogpt_video_recording_frames_dropped_total")
    written = metric(server.url, "robogpt_video_recording_frames_total")
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    for name in names:
        httpx.delete(f"{server.url}/api/streams/{name}", timeout=30)
    time.sleep(args.settle)
    deleted = server.memory()["VmRSS"]
    return {
        "publishers": args.publishers, "frame_mib": args.frame_mb, "fps": args.fps,
        "seconds": args.seconds, "stall": args.stall, "viewers": args.viewers,
        "env": args.env, "set": args.set,
        "server_cpu_ms_per_frame": round(1000 * cpu / max(1, counts.get(200, 0)), 2),
        "published": counts.get(200, 0), "refused": sum(v for k, v in counts.items() if k != 200),
        "recorded": int(written), "dropped": int(dropped),
        "queue_mib_max": round(queued_max / MIB, 1),
        "rss_idle_mib": round(idle["VmRSS"] / 1024),
        "rss_max_sampled_mib": round(highest_rss / 1024),
        "peak_rss_mib": round(peak / 1024),
        "rss_drained_mib": round(drained / 1024),
        "rss_streams_deleted_mib": round(deleted / 1024),
        "problems_after": health.get("problems"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--frame-mb", type=float, default=9.5, help="MiB per frame")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--fps", type=float, default=3, help="frames a second per publisher")
    parser.add_argument("--stall", action="store_true", help="freeze the recordings' disk")
    parser.add_argument("--viewers", type=int, default=0, help="MJPEG viewers per stream")
    parser.add_argument("--settle", type=float, default=3, help="seconds before RSS is read")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--set", action="append", default=[], help="section.key=value")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
