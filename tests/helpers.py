"""Shared test tools: real JPEGs, a real server process on a loopback port, MJPEG parsing."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import ssl
import struct
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


class PortHold:
    """A loopback port kept bound, never listening, until ``close()``.

    Connections to it are refused, the kernel hands it to no ``bind(0)`` and no outgoing
    connection, and no other socket can bind it while it is held. With ``for_server``
    the hold sets SO_REUSEADDR, so a socket that sets it too and names this port (our
    server, nginx) can bind and listen on it alongside the hold (Linux): that is how a
    server is restarted on the same port, or given a port in its config, with no window
    in which another process could take the port.
    """

    def __init__(self, for_server: bool = False):
        self.sock = socket.socket()
        if for_server:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "PortHold":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """For ``preexec_fn``: the child gets SIGKILL when the test process ends (Linux).

    Fixtures stop their servers, but a test run that is killed (a CI timeout's SIGTERM,
    SIGKILL) runs no teardown; without this its servers would live on, holding ports.
    The signal comes when the *thread* that started the child ends: start servers from
    the main thread or one that outlives them.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent ended before prctl took effect
        os._exit(1)


# What the server logs at INFO once its socket is bound (robogpt_video/server.py).
LISTENING = re.compile(rb"robogpt-video listening on (https?)://(\S+):(\d+)")


class ServerProcess:
    """``robogpt-video serve`` in a subprocess, in its own working directory.

    It binds port 0 unless the config names a port, and ``port``/``url`` are the port
    and scheme it reports once it listens. A port in the config should be held by a
    ``PortHold`` (``for_server=True``) for as long as the server may be restarted on it.
    A server given ``server.tls_certfile``/``tls_keyfile`` serves HTTPS: pass
    ``ca_file``, the CA that signed its certificate, and give clients ``verify``.
    """

    preexec_fn = None  # set before start() to run code in the child (e.g. setrlimit)

    def __init__(
        self,
        workdir: Path,
        config: dict | None = None,
        env: dict | None = None,
        ca_file: Path | None = None,
        args: list[str] | None = None,
    ):
        self.args = list(args or [])  # more ``serve`` arguments (``--workers 2``)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = merge(
            {
                "server": {"host": "127.0.0.1", "port": 0},
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
        self.ca_file = ca_file
        self._port: int | None = None
        self._scheme = "http"

    @property
    def port(self) -> int:
        """The port the server reported when it last started."""
        if self._port is None:
            raise RuntimeError("the server has not reported its port: start() it first")
        return self._port

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify=``: a context trusting ``ca_file`` if given, else the default."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    @property
    def recordings(self) -> Path:
        return Path(self.config["recording"]["directory"])

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        """Start the server, learn its port from its output, and wait for ``/health``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOGPT_")}
        env.update(self.env)
        # The log is appended to by every start on this workdir: only what this run
        # prints, from here on, can say which port it has.
        self._log = open(self.log_path, "ab")
        offset = os.fstat(self._log.fileno()).st_size
        self._port = None
        parent, extra = os.getpid(), self.preexec_fn

        def preexec() -> None:
            die_with_parent(parent)
            if extra is not None:
                extra()

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robogpt_video", "serve", "--config", str(self.config_path),
             *self.args],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        reported: list[tuple[str, int]] = []  # (scheme, port)
        verify = self.verify

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if not reported:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    found = LISTENING.search(log.read())
                if found is None:
                    return False
                reported.append((found[1].decode(), int(found[3])))
            try:
                scheme, port = reported[0]
                url = f"{scheme}://127.0.0.1:{port}/health"
                return httpx.get(url, timeout=1, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, timeout, "the server to report its port and answer /health")
        except AssertionError as error:
            self.stop()
            raise RuntimeError(f"{error}:\n{self.output()}") from None
        except BaseException:
            self.stop()
            raise
        scheme, port = reported[0]
        configured = self.config["server"]["port"]
        if configured and port != configured:
            self.stop()
            raise RuntimeError(f"server reported port {port}, configured {configured}")
        self._scheme, self._port = scheme, port
        return self

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


class RedisServer:
    """Debian's redis-server on a unix socket (``--port 0``: no TCP, no port race)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> "RedisServer":
        parent = os.getpid()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket),
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: die_with_parent(parent),
        )
        wait_for(lambda: self.cli("PING") == "PONG", what="redis-server to answer PING")
        return self

    def cli(self, *args: str) -> str:
        try:
            return subprocess.run(
                ["redis-cli", "-s", str(self.socket), *args],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def numsub(self, channel: str) -> int:
        out = self.cli("PUBSUB", "NUMSUB", channel).split()
        return int(out[1]) if len(out) == 2 else -1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.socket.unlink(missing_ok=True)


#: The view socket's binary header after version and name (docs/dashboard.md "The view
#: socket"): sequence, arrival time, age, width, height.
VIEW_FIELDS = struct.Struct(">ddfHH")


def parse_view_frame(message: bytes) -> dict:
    """A binary frame message of ``/ws/view``: its header fields and the JPEG."""
    assert message[0] == 1, "header version"
    length = message[1]
    name = message[2:2 + length].decode()
    seq, timestamp, age, width, height = VIEW_FIELDS.unpack_from(message, 2 + length)
    jpeg = message[2 + length + VIEW_FIELDS.size:]
    return {"stream": name, "seq": int(seq), "timestamp": timestamp, "age": age,
            "width": width, "height": height, "jpeg": jpeg}
