"""Logging to the console and a rotating file; nothing is logged per frame.

Repeats of one log statement within ``logging.repeat_seconds`` are collapsed: the
first is written, the rest are counted and reported as "... (repeated K times)", so a
flood of bad requests costs a few lines, not one per request.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.abc import AbstractAccessLogger

from .config import LoggingSettings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DECIDED = "_repeat_decision"  # set on a record so every handler shares one decision


@dataclass
class _Seen:
    since: float  # monotonic time this window opened (the last record let through)
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Lets the first of a run of identical warnings (or worse) through, counts the rest.

    "Identical" means the same logger, level and message template (arguments may
    differ: a flood from many clients is still one flood). Attach one instance to
    every handler; the decision is stored on the record so handlers agree.
    """

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple, _Seen] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        """True to write ``record``; False when it repeats one written moments ago."""
        decided = getattr(record, _DECIDED, None)
        if decided is not None:
            return decided
        if self.window <= 0 or record.levelno < logging.WARNING:
            return True  # info lines are few by design; warnings are what floods
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen.since >= self.window:
                if seen is not None and seen.suppressed:
                    _add_count(record, seen.suppressed)
                self._seen[key] = _Seen(now)
                decided = True
            else:
                seen.suppressed += 1
                seen.last = record
                decided = False
            due = self._take_expired(now) if now - self._last_sweep >= self.window else []
        setattr(record, _DECIDED, decided)
        _emit(due)
        return decided

    def flush(self) -> None:
        """Write the counts still pending (at shutdown)."""
        with self._lock:
            due = self._take_expired(None)
        _emit(due)

    def _take_expired(self, now: float | None) -> list[logging.LogRecord]:
        """Summaries of windows that have closed (all when ``now`` is None); forgets them."""
        if now is not None:
            self._last_sweep = now
        due = []
        for key, seen in list(self._seen.items()):
            if now is None or now - seen.since >= self.window:
                del self._seen[key]
                if seen.suppressed and seen.last is not None:
                    summary = logging.makeLogRecord(seen.last.__dict__)
                    summary.created = time.time()  # written now: keep the file in order
                    summary.msecs = summary.created % 1 * 1000
                    _add_count(summary, seen.suppressed)
                    setattr(summary, _DECIDED, True)
                    due.append(summary)
        return due


def _add_count(record: logging.LogRecord, count: int) -> None:
    try:
        text = record.getMessage()
    except Exception:  # bad arguments: the handler reports them; a filter must not raise
        text = str(record.msg)
    record.msg = f"{text} (repeated {count} times)"
    record.args = None


def _emit(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)


_filters: list[RepeatFilter] = []


def flush_repeats() -> None:
    """Write pending "(repeated K times)" lines of the installed filter."""
    for repeat in _filters:
        repeat.flush()


def setup_logging(settings: LoggingSettings, access_log: bool = False) -> None:
    """Send every log record at ``settings.level`` to stderr and to ``settings.file``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    repeat = RepeatFilter(settings.repeat_seconds)
    _filters[:] = [repeat]
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    console.addFilter(repeat)
    root.addHandler(console)
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            settings.file, maxBytes=settings.max_bytes, backupCount=settings.backup_count
        )
        rotating.setFormatter(formatter)
        rotating.addFilter(repeat)
        root.addHandler(rotating)
    root.setLevel(settings.level)
    # aiohttp's access log would be a line per frame: only with server.debug.
    logging.getLogger("aiohttp.access").disabled = not access_log


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log (``server.debug``) without secrets: the value of ``?token=``
    (the dashboard's tiles carry one) is redacted, and the Referer is not logged."""

    def log(self, request, response, time: float) -> None:
        url = request.rel_url
        if "token" in url.query:
            url = url.update_query(token="redacted")
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', request.remote, request.method, url,
            *request.version, response.status, response.body_length, time,
            request.headers.get("User-Agent", "-"),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
