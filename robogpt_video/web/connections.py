"""Connection caps and idle timeouts: how many connections the server holds, in all and
per client address, and how long one may sit without a request.

A :class:`ConnectionLimits` wraps the protocol factory of aiohttp's low-level server
(``runner.server``, a public ``web.Server``: called, it makes one ``RequestHandler``
per connection). Each accepted connection is counted; one over a cap gets a JSON 503
``too_many_connections`` with ``Retry-After`` and is closed before aiohttp sees it.
Connections from ``auth.trusted_proxies`` count only towards the total: a proxy
carries many clients.

An admitted connection has ``server.header_timeout_seconds`` to complete its first
request head (else a JSON 408 ``request_timeout`` and the connection is closed: a
client that sends nothing, or trickles its head a byte at a time, holds it no longer),
and after each response ``server.keepalive_timeout_seconds`` to start the next request
(else it is closed quietly). The guard cannot see aiohttp parse; its
:meth:`~ConnectionLimits.middleware`, the app's first, tells it when a request starts,
and the request's task ending tells it that the response has been written. While a
request is being handled (a live view, an upload) no timer of this module applies;
request bodies have their own (``web/bodies.py``, ``web/ingest.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

RETRY_AFTER = 5
LINGER_SECONDS = 2.0
MAX_LINGERING = 64  # refused connections kept open for their answer to arrive


def _answer(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole JSON error response that closes the connection."""
    body = json.dumps({"status": "error", "error": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _refusal(message: str) -> bytes:
    return _answer("503 Service Unavailable", "too_many_connections", message,
                   f"Retry-After: {RETRY_AFTER}\r\n")


class ConnectionLimits:
    """Counts open connections and refuses those over ``max_total`` or ``max_per_address``;
    closes those idle past ``header_timeout`` (no request yet) or ``keepalive_timeout``
    (none since the last response)."""

    def __init__(
        self,
        max_total: int,
        max_per_address: int,
        trusted: list[str] = (),
        header_timeout: float = 30.0,
        keepalive_timeout: float = 30.0,
    ):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.open = 0
        self.by_address: Counter[str] = Counter()
        self.refused = {"total": 0, "per_address": 0}
        #: Connections closed by each timer of this module.
        self.timed_out = {"header": 0, "keepalive": 0}
        self.lingering = 0
        self._guards: dict[asyncio.BaseTransport, _Guarded] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """The app's first middleware: a request has started on its connection (aiohttp
        parsed its head), and ends with this task, once its response has been written."""
        guard = self._guards.get(request.transport)
        if guard is not None:
            guard.request_started(asyncio.current_task())
        return await handler(request)

    def factory(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that applies the caps."""
        return lambda: _Guarded(self, make_protocol)

    def _capped(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        return not any(ip in net for net in self.trusted)

    def admit(self, address: str) -> str | None:
        """Count a new connection, or say why it is refused."""
        if self.open >= self.max_total:
            self.refused["total"] += 1
            return f"the server holds its maximum of {self.max_total} connections (server.max_connections)"
        if self.by_address[address] >= self.max_per_address and self._capped(address):
            self.refused["per_address"] += 1
            return (f"{address} holds its maximum of {self.max_per_address} connections "
                    f"(server.max_connections_per_address)")
        self.open += 1
        self.by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if not self.by_address[address]:
            del self.by_address[address]


class _Guarded(asyncio.Protocol):
    """One connection: refused at once, or handed to aiohttp's protocol untouched and
    closed if it sits idle too long.

    One timer per connection, set lazily: it fires at the first deadline and, if a
    request has moved the deadline since, sets itself again for the new one.
    """

    __slots__ = ("limits", "make_protocol", "inner", "address", "transport",
                 "busy", "served", "since", "timer")

    def __init__(self, limits: ConnectionLimits, make_protocol):
        self.limits = limits
        self.make_protocol = make_protocol
        self.inner: asyncio.Protocol | None = None
        self.address = "?"
        self.transport = None
        self.busy = 0  # requests started and not yet answered
        self.served = False  # a request has started on this connection
        self.since = 0.0  # when it connected, or (served) when the last response was written
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) else "?"
        refused = self.limits.admit(self.address)
        if refused is not None:
            log.warning("connection from %s refused: %s", self.address, refused)
            transport.write(_refusal(refused))
            # Half-close and read what the client still sends, so the answer is not
            # lost to a reset; close after a short grace. A flood closes at once: each
            # lingering refusal holds a file descriptor.
            if self.limits.lingering < MAX_LINGERING and transport.can_write_eof():
                transport.write_eof()
                self.limits.lingering += 1
                asyncio.get_running_loop().call_later(LINGER_SECONDS, self._end_linger, transport)
            else:
                transport.close()
            return
        self.transport = transport
        self.limits._guards[transport] = self
        loop = asyncio.get_running_loop()
        self.since = loop.time()
        self.timer = loop.call_at(self.since + self.limits.header_timeout, self._check)
        self.inner = self.make_protocol()
        self.inner.connection_made(transport)

    def _end_linger(self, transport) -> None:
        self.limits.lingering -= 1
        transport.close()

    def request_started(self, task: asyncio.Task) -> None:
        self.busy += 1
        self.served = True
        task.add_done_callback(self._request_ended)

    def _request_ended(self, task: asyncio.Task) -> None:
        self.busy -= 1
        if self.busy or self.inner is None:
            return
        loop = asyncio.get_running_loop()
        self.since = loop.time()
        if self.timer is None:
            self.timer = loop.call_at(self.since + self.limits.keepalive_timeout, self._check)

    def _check(self) -> None:
        self.timer = None
        transport = self.transport
        if self.busy or self.inner is None or transport.is_closing():
            return  # a request is in hand (its end sets the timer again), or it is closed
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.served:
            if transport.get_write_buffer_size():  # the last response is still going out
                self.since = now
            deadline = self.since + self.limits.keepalive_timeout
        else:
            deadline = self.since + self.limits.header_timeout
        if now < deadline:
            self.timer = loop.call_at(deadline, self._check)
        elif self.served:
            self.limits.timed_out["keepalive"] += 1
            log.debug("connection from %s closed: idle for %g s after its last response "
                      "(server.keepalive_timeout_seconds)", self.address,
                      self.limits.keepalive_timeout)
            transport.close()
        else:
            self.limits.timed_out["header"] += 1
            message = (f"no complete request head within {self.limits.header_timeout:g} s "
                       "(server.header_timeout_seconds)")
            log.info("connection from %s closed: %s", self.address, message)
            transport.write(_answer("408 Request Timeout", "request_timeout", message))
            transport.close()  # after the answer has been sent

    def connection_lost(self, exc) -> None:
        if self.inner is not None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.limits._guards.pop(self.transport, None)
            self.limits.release(self.address)
            self.inner.connection_lost(exc)
            self.inner = None

    def data_received(self, data) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        if self.inner is not None:
            return self.inner.eof_received()
        return False  # a refused connection: the transport closes itself

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
