"""Fleet identity: JSON Web Tokens signed by the fleet's identity provider.

:class:`JwtVerifier` turns a token into a :class:`~robogpt_video.auth.Principal`: the
signature is checked with PyJWT against a public key from the config
(``auth.jwt.public_key``/``public_key_file``) or from a JWKS endpoint
(``auth.jwt.jwks_url``), then the registered claims (``exp``, ``nbf``, and ``iss`` and
``aud`` when configured), then the permissions claim, which is validated like
permissions in the config. docs/security.md ("JWT") says what is accepted.

Only asymmetric algorithms: a server that verifies does not need the means to sign.
An algorithm must also fit the key (RS*/PS* an RSA key, ES256 a P-256 key, ...), so a
public key can never be used as an HMAC secret.

JWKS keys are fetched with aiohttp's client on the event loop (no thread, no blocking
call) and cached for ``jwks_cache_seconds``. A token whose ``kid`` is not in the
cached set, or a set past its time, makes one fetch; requests that need keys while a
fetch is under way wait for that one. Fetches are limited to
:data:`MAX_FETCHES_PER_MINUTE` so that tokens with made-up key ids cannot turn the
server into a load on the identity provider. When a fetch fails, the keys of the last
good one stay in use; with no key to check a token against, the answer is 503
``jwks_unavailable`` (the token may be fine: it is not a failed sign-in).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import TypeAdapter, ValidationError

from .auth import Principal
from .errors import Unauthorized
from .config import JwtSettings, PermissionSettings
from .errors import ApiError

log = logging.getLogger(__name__)

#: The algorithms a token may be signed with (auth.jwt.algorithms picks among them).
SUPPORTED_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

#: JWKS fetches a minute at most, successful or not, whatever caused them.
MAX_FETCHES_PER_MINUTE = 10
#: Seconds a JWKS fetch may take (connect and read).
FETCH_TIMEOUT_SECONDS = 5.0
#: A JWKS document larger than this is refused.
MAX_JWKS_BYTES = 1024 * 1024
#: The longest principal name taken from a token.
MAX_NAME_LENGTH = 256

_PERMISSIONS = TypeAdapter(list[PermissionSettings])


class JwksUnavailable(ApiError):
    """No key to check the token against: the JWKS endpoint could not be fetched."""

    status_code = 503
    code = "jwks_unavailable"
    retry_after = 10


def load_public_key(pem: str):
    """The public key in PEM text; ValueError with a message fit for a config error."""
    if "PRIVATE KEY" in pem:
        raise ValueError("holds a private key: give the public key only (openssl pkey -pubout)")
    if "CERTIFICATE" in pem:
        raise ValueError("holds a certificate: give its public key (openssl x509 -pubkey -noout)")
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a PEM public key ('-----BEGIN PUBLIC KEY-----'): {exc}") from None
    if not algorithms_for(key):
        raise ValueError(
            f"is a {type(key).__name__}, which no supported algorithm uses "
            "(RSA, EC P-256/P-384/P-521, Ed25519, Ed448)"
        )
    return key


def algorithms_for(key) -> frozenset[str]:
    """The algorithms that can verify with ``key`` (a ``cryptography`` public key)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVES.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"})
    return frozenset()


@dataclass(frozen=True)
class _Key:
    key: Any  # a cryptography public key
    algorithms: frozenset[str]  # what it may verify: its family, or its JWK's "alg"


class JwksKeys:
    """The signing keys of a JWKS endpoint, fetched on demand and cached."""

    def __init__(self, url: str, lifespan: float, *, clock: Callable[[], float] = time.monotonic,
                 timeout: float = FETCH_TIMEOUT_SECONDS):
        self.url = url
        self.lifespan = lifespan
        self.timeout = timeout
        self._clock = clock
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._failing = False  # the last fetch failed
        self._attempts: deque[float] = deque()  # times of the fetches of the last minute
        self._lock = asyncio.Lock()
        self._generation = 0  # fetches that ended, well or not (a cancelled one did not)
        self.fetches = 0  # metrics
        self.failures = 0

    async def key(self, kid: str | None) -> _Key:
        """The key named ``kid``: raises :class:`Unauthorized` if the endpoint does not
        have it, :class:`JwksUnavailable` if that cannot be known."""
        if self._fresh():
            found = self._find(kid)
            if found is not None:
                return found
        await self._refresh()
        found = self._find(kid)
        if found is not None:
            return found
        if self._failing or self._fetched_at is None:
            raise JwksUnavailable(
                "the keys to check the token cannot be fetched (auth.jwt.jwks_url)")
        if kid is None:
            raise Unauthorized("the token names no key (kid) and the JWKS has more than one")
        raise Unauthorized(f"the token's key id (kid) {kid[:64]!r} is not in the JWKS")

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self.lifespan

    def _find(self, kid: str | None) -> _Key | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if not isinstance(kid, str):
            return None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """One fetch, unless one ended while this request waited or the budget is spent."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return
            now = self._clock()
            while self._attempts and now - self._attempts[0] >= 60:
                self._attempts.popleft()
            if len(self._attempts) >= MAX_FETCHES_PER_MINUTE:
                return
            self._attempts.append(now)
            self.fetches += 1
            # A fetch cancelled with its request ends nothing: the next waiter fetches.
            try:
                keys = await self._fetch()
            except _FetchFailed as exc:
                self.failures += 1
                if not self._failing:  # once per outage; recovery is logged too
                    kept = (f"the {len(self._keys)} keys fetched before stay in use"
                            if self._keys else "tokens answer 503 until a fetch works")
                    log.warning("cannot fetch the JWKS from %s: %s; %s (retried on demand, "
                                "at most %d fetches a minute)",
                                _shown(self.url), exc, kept, MAX_FETCHES_PER_MINUTE)
                self._failing = True
            else:
                if self._failing:
                    log.info("fetched the JWKS from %s again: %d keys",
                             _shown(self.url), len(keys))
                self._failing = False
                self._keys = keys
                self._fetched_at = self._clock()
            self._generation += 1

    async def _fetch(self) -> dict[str | None, _Key]:
        try:
            # Redirects are not followed: the configured URL is the one trusted for keys.
            # trust_env stays off: no proxy or .netrc from the environment.
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self.url, allow_redirects=False,
                                       headers={"Accept": "application/json"}) as response:
                    if response.status != 200:
                        raise _FetchFailed(f"HTTP {response.status}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > MAX_JWKS_BYTES:
                            raise _FetchFailed(f"larger than {MAX_JWKS_BYTES} bytes")
            document = json.loads(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchFailed(f"{type(exc).__name__}: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise _FetchFailed(f"not JSON: {exc}") from None
        return _signing_keys(document)


class _FetchFailed(Exception):
    pass


def _shown(url: str) -> str:
    """The URL for a log line: without user info or query, which may hold credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _signing_keys(document: Any) -> dict[str | None, _Key]:
    """The asymmetric signing keys of a JWKS document, by key id."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _FetchFailed("not a JWKS document (an object with a 'keys' list)")
    keys: dict[str | None, _Key] = {}
    entries = [e for e in document["keys"] if isinstance(e, dict)]
    for entry in entries:
        if entry.get("use") not in (None, "sig") or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError:
            continue
        family = algorithms_for(key)
        declared = entry.get("alg")
        allowed = family & {declared} if declared is not None else family
        if allowed and kid not in keys:
            keys[kid] = _Key(key, frozenset(allowed))
    if not keys:
        raise _FetchFailed(f"no usable signing key among its {len(entries)} keys")
    if None in keys and len(keys) > 1:
        del keys[None]  # a key without kid is found only when it is the only one
    return keys


class JwtVerifier:
    """Checks a JWT and gives the principal it stands for (``Authenticator.jwt``)."""

    def __init__(self, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.jwks: JwksKeys | None = None
        self._static: _Key | None = None
        if settings.jwks_url:
            self.jwks = JwksKeys(settings.jwks_url, settings.jwks_cache_seconds, clock=clock)
        else:
            key = settings.public_key_object()
            self._static = _Key(key, algorithms_for(key))
        self.algorithms = frozenset(settings.algorithms)
        self.required = ["exp", settings.name_claim, settings.claim]
        self.required += [claim for claim, value in (("iss", settings.issuer),
                                                     ("aud", settings.audience)) if value]

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises :class:`Unauthorized` for any other
        (and :class:`JwksUnavailable` when the keys cannot be had)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not a valid JWT: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthorized(
                f"the token's algorithm {str(alg)[:20]!r} is not accepted (auth.jwt.algorithms)")
        kid = header.get("kid")
        if self.jwks is not None:
            key = await self.jwks.key(kid if isinstance(kid, str) else None)
        else:
            key = self._static
        if alg not in key.algorithms:
            raise Unauthorized(f"the token's algorithm {alg} does not fit its key")
        settings = self.settings
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=settings.audience,
                issuer=settings.issuer, leeway=settings.leeway_seconds,
                options={"require": self.required},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token's audience (aud) is not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token's issuer (iss) is not accepted") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature is not valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no '{exc.claim}' claim") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from None
        return Principal(
            self._name(claims), self._grants(claims), credential=token,
            expires=float(claims["exp"]),
        )

    def _name(self, claims: dict) -> str:
        name = claims[self.settings.name_claim]
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH \
                or not name.isprintable():
            raise Unauthorized(
                f"the token's '{self.settings.name_claim}' claim (the user name) must be "
                f"printable text of 1 to {MAX_NAME_LENGTH} characters")
        return name

    def _grants(self, claims: dict) -> tuple[tuple[str, str], ...]:
        claim = self.settings.claim
        try:
            permissions = _PERMISSIONS.validate_python(claims[claim])
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                for e in exc.errors()[:3])
            raise Unauthorized(
                f"the token's '{claim}' claim must be a list of {{action, streams}} "
                f"like auth.users[].permissions: {problems}") from None
        return tuple((p.action, p.streams) for p in permissions)
