"""The ASGI app factory: routes, error handlers, CORS and the runtime's lifespan."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..config import Settings
from ..runtime import Runtime
from . import api, cleanup, ingest, live, metrics, recordings, ui
from .errors import EXCEPTION_HANDLERS


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the application around a runtime (made from ``settings`` if not given)."""
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="robogpt-video",
        version=__version__,
        description="Publish JPEG frames, watch them live as MJPEG, record them to disk.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.runtime = runtime
    # Seams for later parts: a handler for long-lived multipart ingest, and functions
    # that add fields to a stream's stats (e.g. its current recording segment).
    app.state.mpjpeg_ingest = None
    app.state.stats_extensions = []
    # Set when the server begins to shut down, so long-lived requests end at once
    # instead of holding shutdown for uvicorn's graceful timeout.
    app.state.draining = asyncio.Event()
    runtime.on_shutdown.append(app.state.draining.set)
    for route in live.routes():
        app.router.routes.append(route)
    ingest.install(app)
    app.include_router(api.router)
    app.include_router(cleanup.router)
    metrics.install(app, runtime)
    app.include_router(recordings.router)
    app.state.stats_extensions.append(recordings.stats_extension(runtime))
    ui.install(app)
    if settings.server.cors_enabled:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"],
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Timestamp"],
        )
    # Outermost of all: publish/view skip the stack and viewers get uvicorn's own send
    # for direct chunk writes (web/live.py, web/chunks.py, docs/bench.md).
    live.FastLane.install(app)
    return app
