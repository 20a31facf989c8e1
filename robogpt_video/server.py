"""Run the app under uvicorn on a listening socket whose send buffer is capped."""

from __future__ import annotations

import logging
import socket

import uvicorn

from .config import Settings
from .logs import setup_logging
from .web import create_app

log = logging.getLogger(__name__)


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


class _Server(uvicorn.Server):
    """uvicorn's server, telling long-lived requests (``app.state.draining``) to finish first."""

    def __init__(self, config: uvicorn.Config, draining):
        super().__init__(config)
        self.draining = draining

    async def shutdown(self, sockets=None) -> None:
        self.draining.set()
        await super().shutdown(sockets=sockets)


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    setup_logging(settings.logging)
    server_settings = settings.server
    sock = listening_socket(server_settings.host, server_settings.port, server_settings.send_buffer_kb)
    host, port = sock.getsockname()[:2]
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        loop="auto",
        http="auto",
        ws="auto",
        # uvicorn's 16 MiB default would refuse WebSocket frames the config allows.
        ws_max_size=max(16 * 1024 * 1024, server_settings.max_frame_bytes + 1),
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
    _Server(config, app.state.draining).run(sockets=[sock])
