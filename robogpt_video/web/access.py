"""Access control for every route: one table, one middleware (docs/security.md).

:data:`RULES` names the action each route needs. The middleware finds the rule for a
request, authenticates it (``auth.py``), and refuses with 401 (no or wrong
credentials), 403 (not permitted, or a state-changing request from a page of an origin
that may not make it) or 429 (too many failed authentications from that address).
A path no rule names needs an authenticated user, so a route added without a rule is
closed, not open.

With no user configured (the public default) it only checks origins and writes the
audit line of each admin request.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..auth import NOBODY, Authenticator, Principal
from ..errors import ApiError, Forbidden, TooManyFailures, Unauthorized
from .errors import api_error
from .peers import PEER_HEADER, peer_principal

log = logging.getLogger(__name__)

#: ``public``: open to anyone; ``signed_in``: any valid credentials; else an action.
PUBLIC, SIGNED_IN = "public", "signed_in"
#: Actions that change state: refused from a page whose origin may not make them.
STATE_CHANGING = frozenset({"publish", "admin"})
#: The routes a signed node-to-node request may use (web/peers.py).
PEER_PATHS = ("/api/recordings", "/api/clips")
#: Methods no route uses to change anything (the WebSocket publish route is a GET, but
#: a browser always sends ``Origin`` with it).
READ_METHODS = frozenset({"GET", "HEAD"})

#: The principal of the request being handled (for handlers that filter by it).
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "current_principal", default=NOBODY
)


#: ``Rule.stream`` for operations on every stream at once: the action must be granted
#: on all of them (``streams: "*"``), not on some.
EVERY_STREAM = "*"


@dataclass(frozen=True)
class Rule:
    """What ``methods`` on paths matching ``path`` need: ``action`` on the stream named
    by the path parameter ``stream``; on every stream when ``stream`` is
    :data:`EVERY_STREAM`; on some stream when it is None (the handler then shows only
    what the principal may see)."""

    methods: frozenset[str]
    path: str
    action: str
    stream: str | None = None

    @property
    def pattern(self) -> re.Pattern:
        regex = re.sub(r"\{(\w+)(?::([^}]*))?\}", lambda m: f"(?P<{m[1]}>{m[2] or '[^/]+'})", self.path)
        return re.compile(f"^{regex}$")


def _rule(methods: str, path: str, action: str, stream: str | None = None) -> Rule:
    return Rule(frozenset(methods.split()), path, action, stream)


RULES = (
    _rule("POST PUT", "/publish/{name}", "publish", "name"),
    _rule("GET", "/ws/publish/{name}", "publish", "name"),
    _rule("GET HEAD", "/stream/{name}", "view", "name"),
    _rule("GET HEAD", "/snapshot/{name}", "view", "name"),
    # Some stream: the socket checks `view` on each stream it is asked for.
    _rule("GET", "/ws/view", "view"),
    _rule("GET", "/api/streams", "view"),
    _rule("GET", "/api/streams/{name}/stats", "view", "name"),
    _rule("GET", "/api/streams/{name}/frames", "view", "name"),
    _rule("DELETE", "/api/streams/{name}", "admin", "name"),
    _rule("GET", "/api/recordings", "playback"),
    _rule("GET HEAD", "/api/recordings/{stream}/{file}", "playback", "stream"),
    _rule("DELETE", "/api/recordings/{stream}/{file}", "admin", "stream"),
    _rule("GET", "/api/recordings/{stream}/{file}/play", "playback", "stream"),
    _rule("GET", "/api/recordings/{stream}/{file}/frame", "playback", "stream"),
    # The clip's stream is in the body or the job, not the path: the handler checks it.
    _rule("POST", "/api/clips", "playback"),
    _rule("GET HEAD", "/api/clips/{clip_id}.mp4", "playback"),
    _rule("GET", "/api/clips/{clip_id}", "playback"),
    _rule("POST", "/api/cleanup/run", "admin", EVERY_STREAM),  # sweeps every stream
    # Starlette's routes (not APIRoutes) answer HEAD wherever they answer GET.
    _rule("GET HEAD", "/metrics", "metrics", EVERY_STREAM),  # names every stream
    _rule("POST", "/api/session", SIGNED_IN),
    # Open: health for load balancers (details only with credentials), the dashboard's
    # files (it asks for credentials itself) and the API's documentation.
    _rule("GET", "/health", PUBLIC),
    _rule("GET HEAD", "/", PUBLIC),
    _rule("GET HEAD", "/ui/{path:.+}", PUBLIC),
    _rule("GET HEAD", "/docs", PUBLIC),
    _rule("GET HEAD", "/docs/assets/{path:.+}", PUBLIC),  # Swagger UI's files
    _rule("GET HEAD", "/openapi.json", PUBLIC),
)
_COMPILED = [(rule, rule.pattern) for rule in RULES]


def find_rule(method: str, path: str) -> tuple[Rule | None, dict[str, str]]:
    """The rule for a request and the path parameters it matched (None: no rule)."""
    for rule, pattern in _COMPILED:
        if method in rule.methods:
            match = pattern.match(path)
            if match is not None:
                return rule, match.groupdict()
    return None, {}


class ClientAddress:
    """The client's address: the peer's, or from ``X-Forwarded-For`` when the peer is
    a trusted proxy (the right-most address that is not itself a trusted proxy)."""

    def __init__(self, trusted: list[str]):
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or "?"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ())
                for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return peer


class Budget:
    """Events per client address a minute (failed sign-ins, refused publishes).

    ``limits`` is imported only for a budget that counts: it brings ≈50 modules
    (OpenTelemetry among them), ≈1.6 MB that an open server does not need.
    """

    def __init__(self, per_minute: int):
        self.item = None
        if per_minute:
            from limits import RateLimitItemPerMinute

            self.item = RateLimitItemPerMinute(per_minute)
        self.limiter = None  # a limits.aio.strategies.MovingWindowRateLimiter once started

    def start(self) -> None:
        """Make the storage (it needs a running loop)."""
        if self.item is not None:
            from limits.aio.storage import MemoryStorage
            from limits.aio.strategies import MovingWindowRateLimiter

            self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def spent(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None if it has budget left."""
        if self.limiter is None:
            return None
        if await self.limiter.test(self.item, address):
            return None
        stats = await self.limiter.get_window_stats(self.item, address)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def spend(self, address: str) -> None:
        if self.limiter is not None:
            await self.limiter.hit(self.item, address)


class Origins:
    """Which pages may use the API (``server.cors_origins``)."""

    def __init__(self, allowed: list[str]):
        self.any = "*" in allowed
        self.listed = frozenset(origin.rstrip("/") for origin in allowed if origin != "*")

    @property
    def restricted(self) -> bool:
        return not self.any

    def allowed(self, origin: str) -> bool:
        """Whether a page of ``origin`` may read answers (CORS)."""
        return self.any or origin.rstrip("/") in self.listed

    def may_change(self, request: web.Request, origin: str, strict: bool) -> bool:
        """Whether a page of ``origin`` may make a state-changing request or open a
        WebSocket: a listed origin or this server's own (the dashboard) may. With access control on
        (``strict``), ``*`` is not enough (else any page could use a browser's saved
        credentials)."""
        origin = origin.rstrip("/")
        if origin in self.listed or origin.partition("://")[2] == request.host:
            return True
        return self.any and not strict


def _challenge(realm: str, request: web.Request) -> dict[str, str]:
    has_token = not request.headers.get("Authorization") and request.query.get("token")
    if has_token and request.headers.get("Sec-Fetch-Dest") == "image":
        # An <img> whose ?token= is not right (e.g. the dashboard's, once its session
        # ended): a Bearer challenge alone (RFC 6750). Browsers open their password
        # prompt on a Basic challenge, not on a Bearer one.
        return {"WWW-Authenticate": f'Bearer realm="{realm}", error="invalid_token"'}
    # Basic first: ffmpeg sends the credentials of its URL only to a challenge that
    # starts with "Basic ".
    return {"WWW-Authenticate": f'Basic realm="{realm}", Bearer realm="{realm}"'}


class Access:
    """Everything the middleware needs, built once from the settings."""

    def __init__(self, settings, authenticator: Authenticator, cors_headers: Callable):
        auth = settings.auth
        self.authenticator = authenticator
        self.origins = Origins(settings.server.cors_origins)
        self.address = ClientAddress(auth.trusted_proxies)
        # The per-minute budgets come with access control (docs/security.md).
        budgets = authenticator.enabled
        self.failures = Budget(auth.max_failures_per_minute if budgets else 0)
        self.refused_publishes = Budget(auth.max_refused_publishes_per_minute if budgets else 0)
        self.cors_headers = cors_headers
        #: No user and any origin (the public default): only requests that may change
        #: something, or come from a page, need a look.
        self.open = not authenticator.enabled and self.origins.any
        #: With a cluster: (header value, method, path, query) -> the node that signed a
        #: node-to-node request, or None (web/peers.py).
        self.peer_check: Callable[..., str | None] | None = None
        self.failed = 0  # authentications that failed (metrics)
        self.limited = 0  # requests refused for an exhausted budget (metrics)

    async def on_startup(self, app: web.Application) -> None:
        self.failures.start()
        self.refused_publishes.start()

    def _refuse(self, request: web.Request, exc: ApiError, headers: dict | None = None):
        return api_error(exc, {**(headers or {}), **self.cors_headers(request)})

    def _audit(self, request: web.Request, principal: Principal, status: int) -> None:
        log.info("audit: %s %s by %s from %s: %d", request.method, request.path,
                 principal.name if principal.authenticated else "anonymous",
                 self.address(request), status)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method == "OPTIONS":  # CORS preflights carry no credentials
            return await handler(request)
        if self.open and "Origin" not in request.headers and request.method in READ_METHODS:
            # The public default, a request that changes nothing: nothing to check.
            return await handler(request)
        rule, params = find_rule(request.method, request.path)
        action = rule.action if rule is not None else SIGNED_IN
        origin = request.headers.get("Origin")
        # A WebSocket is not covered by CORS: a page of any origin could open one with
        # the browser's saved credentials and read what it carries.
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if origin and (action in STATE_CHANGING or websocket) and not self.origins.may_change(
            request, origin, self.authenticator.enabled
        ):
            if action == "admin":
                self._audit(request, NOBODY, 403)
            what = "open a WebSocket" if websocket else action
            return self._refuse(request, Forbidden(
                f"pages of {origin} may not {what} here (server.cors_origins)",
                code="origin_not_allowed"))
        principal = NOBODY
        if self.authenticator.enabled:
            try:
                principal = await self._authenticate(request, action, rule, params)
            except ApiError as exc:
                if action == "admin":
                    self._audit(request, NOBODY, exc.status_code)
                if action == "publish" and exc.status_code == 403:
                    # Signed in without the permission: a refused publish too.
                    limited = await self._publishes_spent(request)
                    if limited is not None:
                        return limited
                    await self.refused_publishes.spend(self.address(request))
                headers = (_challenge(self.authenticator.realm, request)
                           if exc.status_code == 401 else None)
                return self._refuse(request, exc, headers)
        budgets = self.authenticator.enabled  # the per-minute budgets come with access control
        if action == "publish" and budgets:
            limited = await self._publishes_spent(request)
            if limited is not None:
                return limited
        token = current_principal.set(principal)
        try:
            response = await handler(request)
        finally:
            current_principal.reset(token)
        if action == "publish" and budgets and response.status >= 400:
            await self.refused_publishes.spend(self.address(request))
        elif action == "admin":
            self._audit(request, principal, response.status)
        return response

    async def _publishes_spent(self, request: web.Request) -> web.Response | None:
        """The 429 answer when the address's refused-publishes budget is spent, else None."""
        address = self.address(request)
        wait = await self.refused_publishes.spent(address)
        if wait is None:
            return None
        self.limited += 1
        exc = TooManyFailures(
            f"too many refused publishes from {address}: try again in {wait} s",
            code="too_many_refused_publishes")
        exc.retry_after = wait
        return self._refuse(request, exc)

    async def _authenticate(self, request, action, rule, params) -> Principal:
        peer = request.headers.get(PEER_HEADER)
        if peer is not None and self.peer_check is not None and rule is not None \
                and rule.path.startswith(PEER_PATHS):
            # Another node, on behalf of a user it has checked (recordings, clips).
            node = self.peer_check(peer, request.method, request.path, request.query)
            if node is None:
                self.failed += 1
                await self.failures.spend(self.address(request))
                log.warning("node-to-node signature not valid from %s for %s %s",
                            self.address(request), request.method, request.path)
                raise Unauthorized("the node-to-node signature is not valid")
            return peer_principal(node)
        authorization = request.headers.get("Authorization")
        query_token = request.query.get("token")
        if authorization or query_token:
            address = self.address(request)
            wait = await self.failures.spent(address)
            if wait is not None:
                self.limited += 1
                exc = TooManyFailures(
                    f"too many failed sign-ins from {address}: try again in {wait} s")
                exc.retry_after = wait
                raise exc
            try:
                principal = await self.authenticator.authenticate(authorization, query_token)
            except Unauthorized:
                self.failed += 1
                await self.failures.spend(address)
                log.warning("authentication failed from %s for %s %s",
                            address, request.method, request.path)
                raise
        else:
            principal = self.authenticator.anonymous
        if action == PUBLIC:
            return principal
        if action == SIGNED_IN:
            if not principal.authenticated:
                raise Unauthorized("sign in: this needs credentials")
            return principal
        if rule is None or rule.stream is None:
            stream = None
        elif rule.stream == EVERY_STREAM:
            stream = EVERY_STREAM  # only the glob "*" matches the name "*"
        else:
            stream = params.get(rule.stream)
        if principal.may(action, stream):
            return principal
        if not principal.authenticated:
            raise Unauthorized(f"sign in: {action} needs credentials")
        if stream == EVERY_STREAM:
            where = " on every stream, which this needs"
        else:
            where = f" on stream '{stream}'" if stream else ""
        raise Forbidden(f"user '{principal.name}' has no {action} permission{where}")
