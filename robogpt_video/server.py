"""Run the app under uvicorn on a listening socket whose send buffer is capped."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from .config import Settings
from .logs import flush_repeats, setup_logging
from .runtime import Runtime
from .web import create_app

log = logging.getLogger(__name__)
ABORT_AFTER = 0.5  # a closed connection may take 1-2 periods to flush at shutdown


def listening_socket(host: str, port: int, send_buffer_kb: int) -> socket.socket:
    """A bound, listening socket; accepted viewer sockets inherit its SO_SNDBUF.

    With the kernel's auto-tuned buffers (up to 4 MB) a slow viewer fell 7-14 s behind
    live; capped at ≈128 KB it stays within a second (DESIGN.md).
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


class GracefulServer(uvicorn.Server):
    """uvicorn, but shutdown first ends the responses that never finish on their own.

    uvicorn waits for open connections before the lifespan shutdown; MJPEG viewers and
    long-lived ingest never finish, so without this it would wait out
    ``timeout_graceful_shutdown`` and only then close the recordings.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, end viewers and ingest, then let uvicorn drain and stop the app."""
        for server in getattr(self, "servers", []):
            server.close()
        log.info("shutting down: ending live responses")
        await self.runtime.begin_shutdown()
        aborter = asyncio.create_task(self._abort_unflushable(ABORT_AFTER))
        try:
            await super().shutdown(sockets)
        finally:
            aborter.cancel()

    async def _abort_unflushable(self, after: float) -> None:
        """Drop connections that are closing but cannot flush to a client that reads nothing.

        A closed transport first sends what it has buffered; a stuck viewer never takes
        it, which would hold uvicorn's drain until its timeout.
        """
        closing: set = set()
        while True:
            await asyncio.sleep(after)
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is None or not transport.is_closing():
                    continue
                if transport in closing:  # still unflushed one period later
                    transport.abort()
                closing.add(transport)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Shut down on SIGINT/SIGTERM and then exit 0 (a second SIGINT forces it)."""
        super().handle_exit(sig, frame)
        # uvicorn re-raises the captured signal after a clean shutdown, so the process
        # would end "killed by SIGTERM"; a graceful stop is a success for systemd/Docker.
        self._captured_signals.clear()


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    setup_logging(settings.logging, access_log=settings.server.debug)
    server_settings = settings.server
    sock = listening_socket(server_settings.host, server_settings.port, server_settings.send_buffer_kb)
    host, port = sock.getsockname()[:2]
    runtime = Runtime(settings)
    config = uvicorn.Config(
        create_app(settings, runtime),
        log_config=None,
        access_log=server_settings.debug,  # a line per request: debugging only
        loop="auto",
        http="auto",
        ws="auto",
        # uvicorn's 16 MiB default would refuse WebSocket frames the config allows.
        ws_max_size=max(16 * 1024 * 1024, server_settings.max_frame_bytes + 1),
        # Viewers and ingest are ended at once (GracefulServer); this bounds ordinary
        # requests still in flight, leaving room for the recorder within a 10 s stop.
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        server_header=False,
    )
    log.info(
        "robogpt-video listening on http://%s:%d (recordings in %s)",
        host,
        port,
        settings.recording.directory,
    )
    try:
        GracefulServer(config, runtime).run(sockets=[sock])
    finally:
        flush_repeats()
        log.info("robogpt-video stopped")
