"""The application: hot routes on aiohttp, the JSON API on FastAPI behind them.

aiohttp serves publish, live view, snapshot and WebSocket ingest itself (public API
only: ``request.transport``, ``request.content``, ``WebSocketResponse``). Every other
path goes to a FastAPI app mounted with ``aiohttp-asgi``: the JSON API, recordings,
metrics, the dashboard and the OpenAPI documentation at ``/docs`` (``openapi.py``: no
CDN, and the document lists the hot routes too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_asgi import ASGIResource
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .. import __version__
from ..auth import Authenticator
from ..config import Settings
from ..runtime import Runtime
from . import (
    api, cleanup, clips, ingest, live, metrics, openapi, recordings, session, ui, viewsocket,
)
from .access import Access
from .connections import ConnectionLimits
from .errors import EXCEPTION_HANDLERS
from .metrics import Metrics
from .peers import Peers
from .routes import cors_headers
from .state import ACCESS, DRAINING, METRICS, RUNTIME, SOCKETS


def create_api(
    settings: Settings, runtime: Runtime, app_metrics: Metrics, authenticator: Authenticator
) -> FastAPI:
    """The FastAPI app for everything but the hot routes."""
    api_app = FastAPI(
        title="robogpt-video",
        version=__version__,
        description="Publish JPEG frames, watch them live as MJPEG, record them to disk.",
        exception_handlers=EXCEPTION_HANDLERS,
        docs_url=None,  # /docs comes from openapi.install, without a CDN
        redoc_url=None,  # none: see openapi.py
    )
    api_app.state.runtime = runtime
    api_app.state.authenticator = authenticator
    api_app.include_router(api.router)
    api_app.include_router(session.router)
    api_app.include_router(cleanup.router)
    metrics.install(api_app, app_metrics)
    api_app.include_router(recordings.router)
    api_app.include_router(clips.router)
    ui.install(api_app)
    openapi.install(api_app)
    if settings.server.cors_enabled:
        api_app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Timestamp"],
        )
    return api_app


class _Asgi24:
    """What the mounted ASGI app needs from aiohttp-asgi and does not get by itself.

    - ``send`` raises once the client has gone (ASGI spec 2.4): aiohttp-asgi's writes
      do raise (``ClientConnectionResetError``, an ``OSError``), but its scope names no
      spec version, and under the default (2.0) Starlette's streaming responses poll
      ``receive`` for a disconnect, which aiohttp-asgi answers at once with an empty
      body for as long as the response lasts: a busy loop. A client that left is not an
      error: the exception ends here (``errors.py`` logs it at debug level).
    - An answer to HEAD has no body: Starlette's responses send theirs whatever the
      method (an ASGI server is expected to drop it) and aiohttp-asgi writes it, which
      would put the body where a keep-alive client reads its next answer.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        scope["asgi"] = {"version": "3.0", "spec_version": "2.4"}
        if scope["type"] == "http" and scope["method"] == "HEAD":
            send = _without_body(send)
        try:
            await self.app(scope, receive, send)
        except (ConnectionError, ClientDisconnect):
            pass  # the client left: nothing to answer


def _without_body(send):
    async def head_send(message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return head_send


def create_app(
    settings: Settings, runtime: Runtime | None = None, connections: ConnectionLimits | None = None
) -> web.Application:
    """Build the application around a runtime (made from ``settings`` if not given).

    ``connections``: the guard of the server's connections (caps and idle timeouts);
    its middleware comes first, so it hears of every request, refused ones included.
    """
    runtime = runtime or Runtime(settings)
    app_metrics = Metrics(runtime)
    verifier = None
    if settings.auth.jwt is not None:
        # Imported only when configured: PyJWT and cryptography are ≈9 MB of memory.
        from ..jwt_auth import JwtVerifier

        verifier = JwtVerifier(settings.auth.jwt)
    cluster = runtime.cluster
    shared = (lambda: cluster.session_secret) if cluster is not None else None
    access = Access(settings, Authenticator(settings.auth, verifier, shared), cors_headers)
    app_metrics.watch_access(access)
    middlewares = [access.middleware]
    if connections is not None:
        app_metrics.watch_connections(connections)
        middlewares.insert(0, connections.middleware)
    app = web.Application(middlewares=middlewares)
    app[ACCESS] = access
    app.on_startup.append(access.on_startup)
    app[RUNTIME] = runtime
    app[METRICS] = app_metrics
    app[DRAINING] = draining = asyncio.Event()
    app[SOCKETS] = set()
    runtime.on_shutdown.append(draining.set)
    live.add_routes(app)
    ingest.add_routes(app)
    viewsocket.add_routes(app)
    # Last: every path the routes above do not take (and their OPTIONS preflights).
    api_app = create_api(settings, runtime, app_metrics, access.authenticator)
    if runtime.cluster is not None:  # recordings on every node
        api_app.state.peers = peers = Peers(runtime.cluster)
        access.peer_check = peers.verify
        app.on_cleanup.append(peers.close)
    app.router.register_resource(ASGIResource(_Asgi24(api_app), root_path="/"))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            app_metrics.variants.shutdown()

    async def begin_shutdown(app: web.Application) -> None:
        await ingest.close_sockets(app)
        await runtime.begin_shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(begin_shutdown)
    return app
