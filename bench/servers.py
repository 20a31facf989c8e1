"""Start the server under test (ours or the Flask baseline) on a loopback port it binds itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def listening_port(pid: int) -> int | None:
    """The IPv4 TCP port process ``pid`` listens on, read from /proc (Linux); None if none yet.

    Both servers bind port 0, so the port is only known once they listen. Neither says
    so at the log levels the benchmark runs them at (ours at WARNING; the baseline's
    werkzeug at WARNING, to keep its per-request log quiet), so the socket is looked up
    instead of the output.
    """
    sockets = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed since listed
                continue
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
        with open(f"/proc/{pid}/net/tcp") as fh:
            lines = fh.readlines()[1:]  # after the header
    except FileNotFoundError:  # the process has exited
        return None
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in sockets:  # 0A: LISTEN
            return int(local.rsplit(":", 1)[1], 16)
    return None


class BenchServer:
    """One server process in its own temp directory; use as a context manager."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        record: bool = True,
        cpus: set[int] | None = None,
        workers: int = 1,
        redis_url: str = "",
    ):
        self.workers = workers  # ours: serve --workers N (needs redis_url)
        self.redis_url = redis_url  # ours: cluster.redis_url
        self.kind = kind
        self.workdir = Path(workdir)
        self.record = record
        self.cpus = cpus  # pin the server to these cores (None: wherever the kernel likes)
        self.host = "127.0.0.1"
        self.port = 0  # the port the server bound, once start() has seen it listen
        self.proc: subprocess.Popen | None = None

    @property
    def recordings(self) -> Path:
        return self.workdir / "recordings"

    def command(self) -> list[str]:
        """The command line that starts this server."""
        if self.kind == "baseline":
            cmd = [sys.executable, "-m", "bench.baseline.app", "--port", "0"]
            cmd += ["--recordings", str(self.recordings)]
            return cmd + ([] if self.record else ["--no-record"])
        config = {
            "server": {"host": self.host, "port": 0},
            "streams": {"max_concurrent": 5000, "max_viewers": 5000},
            "recording": {"enabled": self.record, "directory": str(self.recordings)},
            "logging": {"level": "WARNING", "file": str(self.workdir / "logs" / "server.log")},
        }
        if self.redis_url:
            config["cluster"] = {"redis_url": self.redis_url}
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        return [sys.executable, "-m", "robogpt_video", "serve", "--config", str(path), *workers]

    def pids(self) -> list[int]:
        """The server's processes: itself and, with workers, its children."""
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        children = [int(p) for p in path.read_text().split()] if path.exists() else []
        return [self.proc.pid, *children]

    def start(self, timeout: float = 30.0) -> "BenchServer":
        """Start, learn the port it bound, and wait for ``/health``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOGPT_")}
        self._log = open(self.workdir / "server.out", "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.cpus is None else lambda: os.sched_setaffinity(0, self.cpus),
        )
        self.port = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.kind} server exited: {self.output()[-2000:]}")
            if not self.port:  # with workers, the children listen (the parent holds the port)
                ports = [p for p in map(listening_port, self.pids()) if p]
                # Every worker listening: connections made before would all go to the first.
                if len(ports) < (self.workers if self.kind == "ours" else 1):
                    time.sleep(0.1)
                    continue
                self.port = ports[0]
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} server did not start: {self.output()[-2000:]}")

    def output(self) -> str:
        """What the server printed."""
        path = self.workdir / "server.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def recorded_bytes(self) -> int:
        """Bytes written under the recording directory."""
        if not self.recordings.exists():
            return 0
        return sum(p.stat().st_size for p in self.recordings.rglob("*") if p.is_file())

    def __enter__(self) -> "BenchServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
