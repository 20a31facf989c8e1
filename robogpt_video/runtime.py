"""One place that builds every service in dependency order and stops them in reverse."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from .config import Settings
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
        self.services: list[Service] = [self.registry]
        self.recorder: Recorder | None = None
        if settings.recording.enabled:
            self.recorder = Recorder(settings.recording)
            self.registry.listeners.append(self.recorder)
            self.services.append(self.recorder)
        self._started: list[Service] = []

    async def start(self) -> None:
        """Start services in order; if one fails, stop those already started."""
        for service in self.services:
            try:
                await service.start()
            except BaseException:
                await self.stop()
                raise
            self._started.append(service)

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
