"""Start the server under test (ours or the Flask baseline) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BenchServer:
    """One server process in its own temp directory; use as a context manager."""

    def __init__(
        self, kind: str, workdir: Path, record: bool = True, cpus: set[int] | None = None
    ):
        self.kind = kind
        self.workdir = Path(workdir)
        self.record = record
        self.cpus = cpus  # pin the server to these cores (None: wherever the kernel likes)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def recordings(self) -> Path:
        return self.workdir / "recordings"

    def command(self) -> list[str]:
        """The command line that starts this server."""
        if self.kind == "baseline":
            cmd = [sys.executable, "-m", "bench.baseline.app", "--port", str(self.port)]
            cmd += ["--recordings", str(self.recordings)]
            return cmd + ([] if self.record else ["--no-record"])
        config = {
            "server": {"host": self.host, "port": self.port},
            "streams": {"max_concurrent": 5000, "max_viewers": 5000},
            "recording": {"enabled": self.record, "directory": str(self.recordings)},
            "logging": {"level": "WARNING", "file": str(self.workdir / "logs" / "server.log")},
        }
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return [sys.executable, "-m", "robogpt_video", "serve", "--config", str(path)]

    def start(self, timeout: float = 30.0) -> "BenchServer":
        """Start and wait for ``/health``."""
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: {self.output()[-2000:]}")
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
