"""Logging to the console and a rotating file; nothing is logged per frame."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from .config import LoggingSettings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _ExpectedAbort(logging.Filter):
    """Drop uvicorn's error for a response we end on purpose.

    A viewer whose socket took nothing for ``viewer_stall_seconds`` is cut off by
    returning without finishing its response; uvicorn then closes the connection
    (what we want) and logs an ERROR that would read like a bug. We log our own warning.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def setup_logging(settings: LoggingSettings, access_log: bool = False) -> None:
    """Send every log record at ``settings.level`` to stderr and to ``settings.file``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    root.addHandler(console)
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            settings.file, maxBytes=settings.max_bytes, backupCount=settings.backup_count
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    root.setLevel(settings.level)
    # uvicorn logs through the root handlers; its access log would be a line per frame.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ExpectedAbort) for f in error_log.filters):
        error_log.addFilter(_ExpectedAbort())
    logging.getLogger("uvicorn.access").disabled = not access_log
