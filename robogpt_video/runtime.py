"""One place that builds every service in dependency order and stops them in reverse."""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .cleanup import CleanupService
from .config import Settings
from .memory import FrameMemory
from .recording.clip_jobs import ClipService
from .recording.recorder import Recorder
from .streams import StreamRegistry

log = logging.getLogger(__name__)


class Service(Protocol):
    """A background part of the server: settings in, ``start()`` / ``stop()``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Runtime:
    """Everything one server process runs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.started_at = time.time()
        self.registry = StreamRegistry(settings.streams)
        # Follows each stream's latest frame before the recorder reads the total.
        self.memory = FrameMemory(settings.server.max_frame_memory_mb)
        self.registry.listeners.append(self.memory)
        self.services: list[Service] = [self.registry, self.memory]
        self.cluster = None
        if settings.cluster.enabled:  # only then is Redis imported (docs/cluster.md)
            from .cluster import Cluster

            self.cluster = Cluster(settings, self.registry)
            self.registry.listeners.append(self.cluster)
            self.registry.may_expire = self.cluster.may_expire
            self.services.append(self.cluster)
        self.recorder: Recorder | None = None
        if settings.recording.enabled:
            self.recorder = Recorder(settings.recording, memory=self.memory)
            self.memory.recorder_bytes = lambda: self.recorder.held_bytes
            if self.cluster is not None:  # one recorder per stream: fed through the lease
                self.cluster.recorder = self.recorder
            else:
                self.registry.listeners.append(self.recorder)
            self.services.append(self.recorder)
        self.clips = ClipService(settings)
        self.services.append(self.clips)
        # Last, so it starts after (and stops before) the recorder whose files it deletes.
        self.cleanup = CleanupService(
            settings, self.registry, recorder=lambda: getattr(self, "recorder", None)
        )
        self.services.append(self.cleanup)
        self._started: list[Service] = []
        # Called when shutdown begins, before the HTTP server drains its connections:
        # whatever holds a response open forever (viewers, long-lived ingest) ends it here.
        self.on_shutdown: list[Callable[[], Awaitable[None] | None]] = [
            lambda: self.registry.end_viewers("server shutdown")
        ]
        if self.cluster is not None:
            self.on_shutdown.append(lambda: self.cluster.end_viewers("server shutdown"))
        self.shutting_down = False

    async def start(self) -> None:
        """Start services in order; if one fails, stop those already started."""
        for service in self.services:
            try:
                await service.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(service)
        # Everything alive now (modules, the app, settings) lives as long as the process:
        # keep it out of the garbage collector's full passes, which otherwise scanned
        # ≈64,000+ objects and stopped the event loop for ≈30 ms every few tens of
        # seconds under load, the p99 of the headline benchmark (docs/bench.md).
        gc.collect()
        gc.freeze()

    async def begin_shutdown(self) -> None:
        """End every open-ended response so the server can drain; ``stop()`` follows."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for callback in self.on_shutdown:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("error in shutdown callback %r", callback)

    async def stop(self) -> None:
        """Stop started services in reverse order, logging (not raising) their errors."""
        while self._started:
            service = self._started.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("error stopping %s", type(service).__name__)

    def problems(self) -> list[str]:
        """Reasons the server is degraded, collected from every service that reports some."""
        found: list[str] = []
        for service in self.services:
            report = getattr(service, "problems", None)
            if report is not None:
                found.extend(report())
        return found
