"""Who is asking and what they may do: users, permissions and credentials.

No HTTP here: :class:`Authenticator` turns what a request carried (an ``Authorization``
header, a ``?token=``) into a :class:`Principal`, and a principal answers "may I do
*action* on *stream*". ``web/access.py`` applies it to every route.

Secrets are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest`
against every candidate (no early exit), so the time taken does not depend on how much
of a secret was right or on which user it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from .errors import Unauthorized

#: Every action a permission can grant (docs/security.md says which route needs which).
ACTIONS = ("publish", "view", "playback", "admin", "metrics")
#: The user whose permissions apply to requests that bring no credentials.
ANONYMOUS = "any"
SESSION_PREFIX = "rgv1."
SESSION_KEY_LABEL = b"robogpt-video session tokens"


def session_key(secret: bytes) -> bytes:
    """The key that signs session tokens, derived from a shared secret (the config's or
    the cluster's), so that secret itself signs nothing."""
    return hmac.new(secret, SESSION_KEY_LABEL, hashlib.sha256).digest()


def digest(secret: str) -> bytes:
    """The SHA-256 digest a secret is kept and compared as."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class Principal:
    """An authenticated user (or the anonymous one) and what it may do."""

    name: str
    grants: tuple[tuple[str, str], ...] = ()  # (action, stream glob)
    authenticated: bool = True
    # A JWT's principal: the token itself and its expiry (epoch s), the session it gets.
    credential: str | None = field(default=None, repr=False, compare=False)
    expires: float | None = None

    def may(self, action: str, stream: str | None = None) -> bool:
        """Whether this principal may do ``action`` on ``stream`` (on some stream if None)."""
        for granted, pattern in self.grants:
            if granted == action and (stream is None or fnmatchcase(stream, pattern)):
                return True
        return False

    def can_see(self, action: str):
        """A predicate: may this principal do ``action`` on a given stream name."""
        return lambda stream: self.may(action, stream)


NOBODY = Principal(ANONYMOUS, (), authenticated=False)


@dataclass
class _User:
    principal: Principal
    secrets: list[bytes] = field(default_factory=list)  # digests: token, password


class Authenticator:
    """Credentials → :class:`Principal`, for the users of ``auth`` in the config.

    ``enabled`` is false while no user (other than the anonymous one) and no JWT is
    configured: then nothing is checked (the public default).
    """

    def __init__(self, settings, jwt_verifier=None,
                 shared_secret: Callable[[], bytes | None] | None = None):
        """``shared_secret``: the session secret the cluster's nodes share through Redis
        (None until known); used only without ``auth.session_secret``."""
        self.settings = settings
        self.realm = settings.realm
        self.session_seconds = settings.session_hours * 3600
        self.jwt = jwt_verifier
        if settings.session_secret is not None:  # every node and worker has the same
            self._own_key = session_key(settings.session_secret.get_secret_value().encode())
            shared_secret = None
        else:  # this process's own: its tokens are valid here only
            self._own_key = secrets.token_bytes(32)
        self._shared_secret = shared_secret
        self._shared: tuple[bytes, bytes] | None = None  # (secret, the key derived from it)
        self.anonymous = NOBODY
        self._users: dict[str, _User] = {}
        self._tokens: list[tuple[bytes, Principal]] = []
        for user in settings.users:
            grants = tuple((p.action, p.streams) for p in user.permissions)
            if user.name == ANONYMOUS:
                self.anonymous = Principal(ANONYMOUS, grants, authenticated=False)
                continue
            entry = _User(Principal(user.name, grants))
            if user.token is not None:
                entry.secrets.append(digest(user.token.get_secret_value()))
            if user.token_sha256:
                entry.secrets.append(bytes.fromhex(user.token_sha256))
            for token_digest in entry.secrets:
                self._tokens.append((token_digest, entry.principal))
            if user.password is not None:
                entry.secrets.append(digest(user.password.get_secret_value()))
            if user.password_sha256:
                entry.secrets.append(bytes.fromhex(user.password_sha256))
            self._users[user.name] = entry
        self.enabled = bool(self._users) or jwt_verifier is not None

    async def authenticate(self, authorization: str | None, query_token: str | None) -> Principal:
        """The principal for a request's credentials; the anonymous one if it has none.

        A signed-in principal may also do what needs no credentials (the grants of the
        user ``any``). Raises :class:`Unauthorized` for credentials that are not right
        (a failure).
        """
        principal = await self._principal(authorization, query_token)
        if principal.authenticated and self.anonymous.grants:
            return replace(principal, grants=principal.grants + self.anonymous.grants)
        return principal

    async def _principal(self, authorization: str | None, query_token: str | None) -> Principal:
        for given in (authorization, query_token):
            try:
                (given or "").encode()
            except UnicodeEncodeError:
                # aiohttp hands on header bytes that are not UTF-8 as lone surrogates,
                # which no digest, signature or JWT check can encode: wrong credentials.
                raise Unauthorized("the credentials are not UTF-8") from None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            scheme = scheme.lower()
            value = value.strip()
            if scheme == "bearer" and value:
                return await self._token(value)
            if scheme == "basic" and value:
                return self._basic(value)
            raise Unauthorized("the Authorization header must be 'Bearer <token>' or 'Basic …'")
        if query_token:
            return await self._token(query_token)
        return self.anonymous

    async def _token(self, token: str) -> Principal:
        if token.startswith(SESSION_PREFIX):
            return self._session(token)
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify(token)
        wanted = digest(token)
        found = None
        for token_digest, principal in self._tokens:  # every one: no early exit
            if hmac.compare_digest(token_digest, wanted) and found is None:
                found = principal
        if found is None:
            raise Unauthorized("the token is not valid")
        return found

    def _basic(self, value: str) -> Principal:
        try:
            name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII header
            raise Unauthorized("the Basic credentials are not base64 of 'name:password'") from None
        if not sep:
            raise Unauthorized("the Basic credentials are not base64 of 'name:password'")
        user = self._users.get(name)
        wanted = digest(password)
        # An unknown name costs one comparison too, so timing does not tell names apart.
        candidates = user.secrets if user is not None else [digest("")]
        ok = False
        for secret_digest in candidates:
            ok |= hmac.compare_digest(secret_digest, wanted)
        if user is None or not ok:
            raise Unauthorized("wrong user name or password")
        return user.principal

    # Session tokens: what the dashboard puts in ``?token=`` for <img> tiles after a
    # password login. ``rgv1.<name b64>.<expiry>.<hmac>``; the user's permissions are
    # looked up again on every request. The key: ``auth.session_secret``'s, else the
    # cluster's (Redis ``rv:session-secret``), else one made at start (docs/security.md).

    def issue_session(self, principal: Principal) -> tuple[str, float]:
        """A signed token standing for ``principal`` until the returned expiry (epoch s).

        A JWT's principal gets its JWT back: a session token names a configured user,
        and a token's subject may share a configured user's name but not its permissions.
        """
        if principal.credential is not None:  # a JWT, or a session token: not renewed
            return principal.credential, principal.expires
        user = self._users.get(principal.name)
        if user is None:
            raise Unauthorized(f"'{principal.name}' is not a configured user")
        expires = int(time.time() + self.session_seconds)
        name = base64.urlsafe_b64encode(principal.name.encode()).decode().rstrip("=")
        body = f"{SESSION_PREFIX}{name}.{expires}"
        return f"{body}.{self._sign(body, self._session_keys()[0])}", float(expires)

    def _session_keys(self) -> list[bytes]:
        """The keys a session token may be signed with, the one to sign with first: the
        cluster's once this node knows it, then this process's own (or the config's)."""
        secret = self._shared_secret() if self._shared_secret is not None else None
        if not secret:
            return [self._own_key]
        if self._shared is None or self._shared[0] != secret:
            self._shared = (secret, session_key(secret))
        return [self._shared[1], self._own_key]

    @staticmethod
    def _sign(body: str, key: bytes) -> str:
        mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _session(self, token: str) -> Principal:
        body, _, signature = token.rpartition(".")
        valid = False
        for key in self._session_keys():  # every key: no early exit
            valid |= hmac.compare_digest(self._sign(body, key).encode(), signature.encode())
        if not valid:
            raise Unauthorized("the session token is not valid")
        _, name, expires = body.split(".")
        if float(expires) < time.time():
            raise Unauthorized("the session token has expired: sign in again")
        user = self._users.get(base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode())
        if user is None:
            raise Unauthorized("the session token's user no longer exists")
        # Carries its token and expiry: POST /api/session hands back the same one, so a
        # session cannot renew itself past auth.session_hours.
        return replace(user.principal, credential=token, expires=float(expires))
