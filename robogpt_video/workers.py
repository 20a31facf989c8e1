"""``robogpt-video serve --workers N``: N server processes on one port (docs/cluster.md).

The parent binds the port once with SO_REUSEPORT (so port 0 resolves to one port for
all), keeps that socket bound but not listening (it takes no connections and holds the
port), and starts N ``serve`` processes that each listen on it with SO_REUSEPORT: the
kernel spreads new connections over them. They share streams through
``cluster.redis_url``. SIGTERM and SIGINT are passed on; a worker that dies is not
restarted (the others keep serving; restart the whole service to get it back); the
parent exits when every worker has, with 0 if all exited 0, else 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from .config import Settings


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, not listening: the port is ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _end_with_parent() -> None:
    """In a worker: SIGTERM when the parent dies, however it dies (Linux; else nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_workers(settings: Settings, count: int, argv: list[str]) -> int:
    """Start ``count`` workers running ``robogpt-video <argv>`` on one port; wait for them."""
    if not settings.cluster.enabled:
        print(
            f"robogpt-video: --workers {count} needs cluster.redis_url: the workers share "
            "streams through Redis (docs/cluster.md)",
            file=sys.stderr,
        )
        return 2
    host = settings.server.host
    holder = reserve_port(host, settings.server.port)
    port = holder.getsockname()[1]
    workers: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(count):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "robogpt_video", *argv,
                 "--port", str(port), "--workers", "1", "--worker-index", str(index)],
                preexec_fn=_end_with_parent,
            ))
        codes: dict[int, int] = {}
        by_pid = {worker.pid: index for index, worker in enumerate(workers)}
        while len(codes) < len(workers):
            pid, status = os.wait()  # PEP 475: retried after our signal handler runs
            if pid not in by_pid:
                continue
            index = by_pid[pid]
            code = codes[index] = os.waitstatus_to_exitcode(status)
            workers[index].returncode = code  # reaped here, not by Popen
            if code:
                left = len(workers) - len(codes)
                print(f"robogpt-video: worker {index} (pid {pid}) exited with {code}; "
                      f"{left} worker(s) still serving", file=sys.stderr, flush=True)
        return 0 if not any(codes.values()) else 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        holder.close()
