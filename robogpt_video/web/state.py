"""What the aiohttp handlers find on the application (typed keys)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..runtime import Runtime
from .access import Access
from .metrics import Metrics

RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
#: Set when the server begins to shut down: long-lived requests end at once.
DRAINING = web.AppKey("draining", asyncio.Event)
#: Open ingest WebSockets, closed with "going away" at shutdown.
SOCKETS = web.AppKey("sockets", set)
#: Access control: authentication, permissions, origins and per-address budgets.
ACCESS = web.AppKey("access", Access)
