"""Run the application under aiohttp on a listening socket whose send buffer is capped,
with TLS when ``server.tls_certfile`` and ``server.tls_keyfile`` are set."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import ssl
from pathlib import Path

from aiohttp import web

from .config import ConfigError, ServerSettings, Settings
from .logs import AccessLogger, flush_repeats, setup_logging
from .runtime import Runtime
from .web import create_app
from .web.connections import ConnectionLimits
from .web.protocol import handler_factory

log = logging.getLogger(__name__)
#: Ordinary requests still in flight at shutdown get this long; viewers and ingest are
#: ended at once, leaving room for the recorder within a 10 s stop.
SHUTDOWN_TIMEOUT = 5.0
BACKLOG = 2048
#: File descriptors kept free of connections: recording files, logs, /proc reads, and
#: refused connections while their answer goes out (web/connections.py MAX_LINGERING).
FD_RESERVE = 256


def lan_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent:
    connecting a UDP socket only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
            return probe.getsockname()[0]
        except OSError:
            return None


def first_steps(scheme: str, host: str, port: int) -> str:
    """Where the dashboard is and how to publish a first frame (printed at start)."""
    wildcard = host in ("0.0.0.0", "::", "")
    local = f"{scheme}://{'localhost' if wildcard else host}:{port}"
    where = f"dashboard: {local}/"
    lan = lan_address() if wildcard else None
    if lan is not None and not lan.startswith("127."):
        where += f" (on the network: {scheme}://{lan}:{port}/)"
    return f"{where}; publish a frame: curl -F frame=@photo.jpg {local}/publish/camera1"


def own_url(scheme: str, host: str, port: int) -> str:
    """How other nodes reach this server by default (``cluster.advertise_url`` empty):
    the bound address; a wildcard host becomes the machine's address on its default
    route (loopback if it has none)."""
    if host in ("0.0.0.0", "::", ""):
        host = lan_address() or "127.0.0.1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard one; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int) -> int:
    """``server.max_connections``, lowered so connections leave ``FD_RESERVE`` files free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    cap = min(configured, max(1, soft - FD_RESERVE))
    if cap < configured:
        log.warning("server.max_connections lowered from %d to %d: %d open files allowed "
                    "(ulimit -n), %d kept for recording", configured, cap, soft, FD_RESERVE)
    return cap


def listening_socket(
    host: str, port: int, send_buffer_kb: int, reuse_port: bool = False
) -> socket.socket:
    """A bound, listening socket; accepted viewer sockets inherit its SO_SNDBUF.

    With the kernel's auto-tuned buffers (up to 4 MB) a slow viewer fell 7-14 s behind
    live; capped at ≈128 KB it still held about 8 frames (3.5 s at 100 KB/s). What keeps
    it about two frames behind its link now is ``TCP_NOTSENT_LOWAT`` on each viewer
    socket (web/mjpeg.py; docs/bench.md "Slow viewers"). ``reuse_port``:
    SO_REUSEPORT, so the workers of ``serve --workers N`` each listen on the same port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if send_buffer_kb:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_kb * 1024)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


class _EncryptedKey(Exception):
    """The TLS private key asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal.
    raise _EncryptedKey


def _load_error(certfile: Path, keyfile: Path, exc: ssl.SSLError) -> str:
    """Which of the two files ``load_cert_chain`` could not use, and why."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return (
            f"server.tls_keyfile: {keyfile} is not the private key of the certificate in {certfile}"
        )
    try:  # does the certificate file hold a certificate OpenSSL can read?
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except ssl.SSLError:
        return f"server.tls_certfile: {certfile} holds no PEM certificate ({exc})"
    return f"server.tls_keyfile: {keyfile} holds no PEM private key ({exc})"


def tls_context(server: ServerSettings) -> ssl.SSLContext | None:
    """The TLS context of ``server.tls_certfile`` and ``tls_keyfile``; ``None`` without them.

    Raises :class:`ConfigError` naming the key and the file that cannot be read or used.
    """
    certfile, keyfile = server.tls_certfile, server.tls_keyfile
    if certfile is None or keyfile is None:  # the config allows both or neither
        return None
    for key, path in (("server.tls_certfile", certfile), ("server.tls_keyfile", keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"server.tls_keyfile: {keyfile} is encrypted; give the key without a passphrase"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(_load_error(certfile, keyfile, exc)) from None
    return context


async def run(
    settings: Settings, sock: socket.socket, ssl_context: ssl.SSLContext | None
) -> None:
    """Serve on ``sock`` (with TLS if ``ssl_context``) until SIGINT or SIGTERM, then stop."""
    runtime = Runtime(settings)
    server = settings.server
    limits = ConnectionLimits(
        connection_cap(server.max_connections),
        server.max_connections_per_address,
        settings.auth.trusted_proxies,
        header_timeout=server.header_timeout_seconds,
        keepalive_timeout=server.keepalive_timeout_seconds,
    )
    handler_args = dict(  # for each connection's web.RequestHandler
        access_log=logging.getLogger("aiohttp.access") if server.debug else None,  # debugging only
        access_log_class=AccessLogger,  # redacts ?token=
        # The guard closes idle connections (web/connections.py); aiohttp's own timer,
        # later than both of its timeouts, only backs it up.
        keepalive_timeout=2 * max(server.header_timeout_seconds, server.keepalive_timeout_seconds),
    )
    runner = web.AppRunner(
        create_app(settings, runtime, limits),
        handle_signals=False,
        # A viewer or publisher that leaves ends its handler at once (viewer counts
        # stay true on an idle stream).
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        **handler_args,
    )
    await runner.setup()  # starts the runtime (recorder, cleanup, ...)
    listener = None
    try:
        # aiohttp's connection handler for ``runner.server`` (answering what it cannot
        # parse in JSON, web/protocol.py) behind the caps. A TLS handshake comes before
        # the guard sees the connection: it has the header timeout of its own.
        listener = await asyncio.get_running_loop().create_server(
            limits.factory(handler_factory(runner.server, **handler_args)), sock=sock, ssl=ssl_context, backlog=BACKLOG,
            ssl_handshake_timeout=server.header_timeout_seconds if ssl_context else None,
        )
        host, port = sock.getsockname()[:2]
        if runtime.cluster is not None:
            scheme = "https" if ssl_context else "http"
            runtime.cluster.set_address(host, port, own_url(scheme, host, port))
        log.info(
            "robogpt-video listening on %s://%s:%d (recordings in %s)",
            "https" if ssl_context else "http",
            host,
            port,
            settings.recording.directory,
        )
        log.info("%s", first_steps("https" if ssl_context else "http", host, port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: ending live responses")
    finally:
        # Stop accepting; then end viewers and ingest (on_shutdown), let other requests
        # finish within SHUTDOWN_TIMEOUT, and stop the runtime.
        if listener is not None:
            listener.close()
        await runner.cleanup()


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; a graceful stop returns normally (exit code 0).

    Raises :class:`ConfigError` before serving if the TLS files cannot be used.
    """
    server_settings = settings.server
    ssl_context = tls_context(server_settings)
    setup_logging(settings.logging, access_log=server_settings.debug)
    raise_fd_limit()
    sock = listening_socket(
        server_settings.host, server_settings.port, server_settings.send_buffer_kb, reuse_port
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run(settings, sock, ssl_context))
    finally:
        sock.close()
        flush_repeats()
        log.info("robogpt-video stopped")
