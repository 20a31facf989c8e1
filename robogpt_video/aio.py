"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Inactivity:
    """``async with Inactivity(seconds) as clock:`` raises :class:`TimeoutError` once the
    block has gone ``seconds`` without calling ``clock.touch()`` (counted from entry).

    Unlike ``asyncio.timeout`` re-armed per read, ``touch`` only reads the clock: the
    one timer fires at the earliest possible deadline and, if ``touch`` moved it, sets
    itself again for the new one. Data flowing steadily costs one timer per ``seconds``.

    ``limit``, if given, is asked for the allowed quiet time (at least ``seconds``) each
    time the timer fires: a reader can allow a longer pause in some states (between the
    parts of a long-lived upload) than in others. The timer fires at least every
    ``seconds``, so a state that shortens the limit is noticed in time.
    """

    __slots__ = ("seconds", "_limit", "_loop", "_last", "_handle", "_timeout")

    def __init__(self, seconds: float, limit: Callable[[], float] | None = None):
        self.seconds = seconds
        self._limit = limit
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> "Inactivity":
        self._loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + self.seconds, self._check)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        return await self._timeout.__aexit__(exc_type, exc, tb)

    def touch(self) -> None:
        """Something arrived: the quiet time counts from now."""
        self._last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        limit = self.seconds if self._limit is None else max(self.seconds, self._limit())
        deadline = self._last + limit
        if now >= deadline:
            self._handle = None
            self._timeout.reschedule(now)  # cancels the block, which raises TimeoutError
        else:
            self._handle = self._loop.call_at(min(deadline, now + self.seconds), self._check)
