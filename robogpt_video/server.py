"""Run the application under aiohttp on a listening socket whose send buffer is capped."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from .config import Settings
from .logs import flush_repeats, setup_logging
from .runtime import Runtime
from .web import create_app

log = logging.getLogger(__name__)
#: Ordinary requests still in flight at shutdown get this long; viewers and ingest are
#: ended at once, leaving room for the recorder within a 10 s stop.
SHUTDOWN_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 30.0


def listening_socket(host: str, port: int, send_buffer_kb: int) -> socket.socket:
    """A bound, listening socket; accepted viewer sockets inherit its SO_SNDBUF.

    With the kernel's auto-tuned buffers (up to 4 MB) a slow viewer fell 7-14 s behind
    live; capped at ≈128 KB it stays within a second (docs/bench.md).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer_kb:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_kb * 1024)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def run(settings: Settings, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGINT or SIGTERM, then stop gracefully."""
    runtime = Runtime(settings)
    debug = settings.server.debug
    runner = web.AppRunner(
        create_app(settings, runtime),
        handle_signals=False,
        # A viewer or publisher that leaves ends its handler at once (viewer counts
        # stay true on an idle stream).
        handler_cancellation=True,
        access_log=logging.getLogger("aiohttp.access") if debug else None,  # debugging only
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()  # starts the runtime (recorder, cleanup, ...)
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        host, port = sock.getsockname()[:2]
        log.info(
            "robogpt-video listening on http://%s:%d (recordings in %s)",
            host,
            port,
            settings.recording.directory,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: ending live responses")
    finally:
        # Stops accepting, ends viewers and ingest (on_shutdown), lets other requests
        # finish within SHUTDOWN_TIMEOUT, then stops the runtime.
        await runner.cleanup()


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; a graceful stop returns normally (exit code 0)."""
    setup_logging(settings.logging, access_log=settings.server.debug)
    server_settings = settings.server
    sock = listening_socket(server_settings.host, server_settings.port, server_settings.send_buffer_kb)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run(settings, sock))
    finally:
        sock.close()
        flush_repeats()
        log.info("robogpt-video stopped")
