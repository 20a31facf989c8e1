"""Connection caps: how many connections the server holds, in all and per client address.

A :class:`ConnectionLimits` wraps the protocol factory of aiohttp's low-level server
(``runner.server``, a public ``web.Server``: called, it makes one ``RequestHandler``
per connection). Each accepted connection is counted; one over a cap gets a JSON 503
``too_many_connections`` with ``Retry-After`` and is closed before aiohttp sees it.
Connections from ``auth.trusted_proxies`` count only towards the total: a proxy
carries many clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

RETRY_AFTER = 5
LINGER_SECONDS = 2.0
MAX_LINGERING = 64  # refused connections kept open for their answer to arrive


def _refusal(message: str) -> bytes:
    body = json.dumps(
        {"status": "error", "error": "too_many_connections", "message": message}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionLimits:
    """Counts open connections and refuses those over ``max_total`` or ``max_per_address``."""

    def __init__(self, max_total: int, max_per_address: int, trusted: list[str] = ()):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]
        self.open = 0
        self.by_address: Counter[str] = Counter()
        self.refused = {"total": 0, "per_address": 0}
        self.lingering = 0

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
    """One connection: refused at once, or handed to aiohttp's protocol untouched."""

    __slots__ = ("limits", "make_protocol", "inner", "address")

    def __init__(self, limits: ConnectionLimits, make_protocol):
        self.limits = limits
        self.make_protocol = make_protocol
        self.inner: asyncio.Protocol | None = None
        self.address = "?"

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
        self.inner = self.make_protocol()
        self.inner.connection_made(transport)

    def _end_linger(self, transport) -> None:
        self.limits.lingering -= 1
        transport.close()

    def connection_lost(self, exc) -> None:
        if self.inner is not None:
            self.limits.release(self.address)
            self.inner.connection_lost(exc)

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
