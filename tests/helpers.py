"""Shared test tools: real JPEGs, a real server process on a free loopback port, MJPEG parsing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import simplejpeg
import yaml

REPO = Path(__file__).resolve().parent.parent


def make_jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 80) -> bytes:
    """A real JPEG whose content depends on ``seed`` (a gradient plus a moving block)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x + seed * 7) % 256
    img[..., 1] = (y + seed * 3) % 256
    img[..., 2] = (seed * 11) % 256
    size = max(4, min(width, height) // 4)
    left = (seed * 13) % max(1, width - size)
    img[: size, left : left + size] = 255
    return simplejpeg.encode_jpeg(img, quality=quality)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition", step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that.

    ``timeout`` is a generous bound for a busy machine, not a timing assertion.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``robogpt-video serve`` in a subprocess, in its own working directory."""

    preexec_fn = None  # set before start() to run code in the child (e.g. setrlimit)

    def __init__(self, workdir: Path, config: dict | None = None, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = merge(
            {
                "server": {"host": "127.0.0.1", "port": free_port()},
                "recording": {"directory": str(self.workdir / "recordings")},
                "logging": {"file": str(self.workdir / "logs" / "server.log")},
            },
            config or {},
        )
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "stderr.log"

    @property
    def port(self) -> int:
        return self.config["server"]["port"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def recordings(self) -> Path:
        return Path(self.config["recording"]["directory"])

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOGPT_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robogpt_video", "serve", "--config", str(self.config_path)],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the server and wait; kill it if it does not exit. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """``kill -9``: no chance to clean up."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge two config dicts."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def publish(url: str, name: str, jpeg: bytes, client: httpx.Client | None = None) -> httpx.Response:
    """POST one frame the way the brief shows (multipart field ``frame``)."""
    files = {"frame": ("frame.jpg", jpeg, "image/jpeg")}
    if client is not None:
        return client.post(f"{url}/publish/{name}", files=files)
    return httpx.post(f"{url}/publish/{name}", files=files, timeout=10)


def iter_parts(chunks: Iterator[bytes]) -> Iterator[tuple[dict[str, str], bytes]]:
    """Parse a ``multipart/x-mixed-replace; boundary=frame`` body into (headers, jpeg)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            start = buf.find(b"--frame\r\n")
            if start < 0:
                break
            head_end = buf.find(b"\r\n\r\n", start)
            if head_end < 0:
                break
            lines = buf[start + 9 : head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers["content-length"])
            body_start = head_end + 4
            if len(buf) < body_start + length + 2:
                break
            yield headers, buf[body_start : body_start + length]
            buf = buf[body_start + length + 2 :]
