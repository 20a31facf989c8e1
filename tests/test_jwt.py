"""Fleet identity: JWTs checked with PyJWT against a configured public key or a JWKS.

Real servers in subprocesses (port 0), tokens signed here with keys made here, and a
JWKS endpoint served from a thread of this process that counts the fetches it answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from blockbuster import BlockBuster
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prometheus_client.parser import text_string_to_metric_families

from helpers import ServerProcess, iter_parts, make_jpeg, publish, wait_for
from robogpt_video.auth import Authenticator
from robogpt_video.errors import Unauthorized
from robogpt_video.config import ConfigError, load_settings
from robogpt_video.jwt_auth import (
    MAX_FETCHES_PER_MINUTE,
    JwksKeys,
    JwksUnavailable,
    JwtVerifier,
)

ISSUER = "https://idp.fleet.test"
AUDIENCE = "robogpt-video"
VIEW_CAMS = [{"action": "view", "streams": "cam_*"}]
# A configured user that publishes the frames the tokens' principals look at.
CAM_SECRET = "cam-secret-0123456789"
CAM = {"Authorization": f"Bearer {CAM_SECRET}"}
USERS = [{"name": "cam", "token": CAM_SECRET,
          "permissions": [{"action": "publish"}, {"action": "metrics"}]}]


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(private_key, alg: str = "RS256", kid: str | None = None, **claims) -> str:
    """A token with good defaults; a claim given as None is left out."""
    payload = {"sub": "robot7", "iss": ISSUER, "aud": AUDIENCE,
               "exp": int(time.time()) + 600, "permissions": VIEW_CAMS}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, private_key, algorithm=alg,
                      headers={"kid": kid} if kid is not None else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(header: dict, payload: dict) -> str:
    """``header.payload`` with no signature yet."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def good_claims(**claims) -> dict:
    return {"sub": "robot7", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600,
            "permissions": VIEW_CAMS, **claims}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def scrape(url: str) -> dict[str, float]:
    response = httpx.get(f"{url}/metrics", headers=CAM, timeout=10)
    assert response.status_code == 200
    return {sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples if not sample.labels}


def jwk(private_key, kid: str, **extra) -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**data, "kid": kid, "use": "sig", **extra}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that left before its answer (a cancelled fetch)


class JwksServer:
    """A JWKS endpoint on a loopback port, served from a thread; counts its requests.

    With ``gate`` set to an unset Event, each request waits for it after ``entered``.
    """

    def __init__(self, keys: list[dict]):
        self.document: object = {"keys": keys}
        self.status = 200
        self.requests = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer._lock:
                    outer.requests += 1
                    status, document, gate = outer.status, outer.document, outer.gate
                outer.entered.set()
                if gate is not None:
                    gate.wait(30)
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def jwks_server():
    servers: list[JwksServer] = []

    def start(keys: list[dict]) -> JwksServer:
        servers.append(JwksServer(keys))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def jwt_config(**jwt_settings) -> dict:
    return {"auth": {"users": USERS, "max_failures_per_minute": 0,
                     "jwt": {"issuer": ISSUER, "audience": AUDIENCE, **jwt_settings}}}


# --- (a) a public key in the config -------------------------------------------------

@pytest.fixture(scope="module")
def key_server(tmp_path_factory, rsa_key):
    """One server whose JWTs are checked against the RSA key's public half."""
    server = ServerProcess(tmp_path_factory.mktemp("jwt"), jwt_config(public_key=pem(rsa_key)))
    try:
        server.start()
        with httpx.Client(headers=CAM, timeout=10) as client:
            for name, seed in (("cam_1", 1), ("cam_2", 2), ("dock", 3)):
                assert publish(server.url, name, make_jpeg(seed=seed), client).status_code == 200
        yield server
    finally:
        server.stop()


def test_a_token_grants_its_permissions_and_no_more(key_server, rsa_key):
    url, token = key_server.url, sign(rsa_key)
    with httpx.Client(headers=bearer(token), timeout=10) as client:
        snapshot = client.get(f"{url}/snapshot/cam_1")
        assert snapshot.status_code == 200 and snapshot.content == make_jpeg(seed=1)
        assert client.get(f"{url}/api/streams/cam_2/stats").status_code == 200
        refused = client.get(f"{url}/snapshot/dock")
        assert refused.status_code == 403
        assert refused.json()["message"] == "user 'robot7' has no view permission on stream 'dock'"
        assert publish(url, "cam_1", make_jpeg(seed=9), client).status_code == 403
        assert client.get(f"{url}/api/recordings").status_code == 403
        names = {s["name"] for s in client.get(f"{url}/api/streams").json()["streams"]}
        assert names == {"cam_1", "cam_2"}
    # The token's own permissions, not the config's: it may publish if it says so.
    publisher = sign(rsa_key, sub="robot8", permissions=[{"action": "publish", "streams": "cam_*"}])
    with httpx.Client(headers=bearer(publisher), timeout=10) as client:
        assert publish(url, "cam_1", make_jpeg(seed=1), client).status_code == 200
        assert publish(url, "dock", make_jpeg(seed=3), client).status_code == 403


def test_the_token_in_the_query_opens_a_live_stream(key_server, rsa_key):
    token = sign(rsa_key)
    with httpx.stream("GET", f"{key_server.url}/stream/cam_2?token={token}", timeout=10) as view:
        assert view.status_code == 200
        headers, first = next(iter_parts(view.iter_raw()))
        assert first == make_jpeg(seed=2)
    refused = httpx.get(f"{key_server.url}/stream/dock?token={token}", timeout=10)
    assert refused.status_code == 403


def _hs256_with_the_public_key(rsa_key) -> str:
    """The classic confusion: HMAC-SHA256 keyed with the PEM the server verifies with."""
    body = unsigned({"alg": "HS256", "typ": "JWT"}, good_claims())
    mac = hmac.new(pem(rsa_key).encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(mac)}"


def _tampered(rsa_key) -> str:
    header, _, signature = sign(rsa_key).split(".")
    payload = b64(json.dumps(good_claims(permissions=[{"action": "admin"}])).encode())
    return f"{header}.{payload}.{signature}"


REFUSED = {
    "expired": (lambda k, o: sign(k, exp=int(time.time()) - 3600), "token expired"),
    "not yet valid": (lambda k, o: sign(k, nbf=int(time.time()) + 3600),
                      "token not valid yet (nbf)"),
    "no exp": (lambda k, o: sign(k, exp=None), "the token has no 'exp' claim"),
    "wrong audience": (lambda k, o: sign(k, aud="another-service"),
                       "the token's audience (aud) is not accepted"),
    "no audience": (lambda k, o: sign(k, aud=None), "the token has no 'aud' claim"),
    "wrong issuer": (lambda k, o: sign(k, iss="https://evil.test"),
                     "the token's issuer (iss) is not accepted"),
    "no issuer": (lambda k, o: sign(k, iss=None), "the token has no 'iss' claim"),
    "signed by another key": (lambda k, o: sign(rsa.generate_private_key(65537, 2048)),
                              "the token's signature is not valid"),
    "payload changed": (lambda k, o: _tampered(k), "the token's signature is not valid"),
    "alg none": (lambda k, o: unsigned({"alg": "none", "typ": "JWT"}, good_claims()) + ".",
                 "the token's algorithm 'none' is not accepted (auth.jwt.algorithms)"),
    "HS256 keyed with the public key": (
        lambda k, o: _hs256_with_the_public_key(k),
        "the token's algorithm 'HS256' is not accepted (auth.jwt.algorithms)"),
    "ES256 by a key of another family": (
        lambda k, o: sign(o, alg="ES256"), "the token's algorithm ES256 does not fit its key"),
    "not a JWT": (lambda k, o: "a.b.c", "the token is not a valid JWT"),
    "no permissions claim": (lambda k, o: sign(k, permissions=None),
                             "the token has no 'permissions' claim"),
    "permissions not a list": (lambda k, o: sign(k, permissions="view"),
                               "the token's 'permissions' claim must be a list"),
    "unknown action": (lambda k, o: sign(k, permissions=[{"action": "fly", "streams": "*"}]),
                       "the token's 'permissions' claim must be a list"),
    "no sub": (lambda k, o: sign(k, sub=None), "the token has no 'sub' claim"),
    "exp not a number": (lambda k, o: sign(k, exp=[1]), "the token is not valid"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_tokens_are_401(key_server, rsa_key, ec_key, case):
    make, message = REFUSED[case]
    token = make(rsa_key, ec_key)
    for response in (
        httpx.get(f"{key_server.url}/snapshot/cam_1", headers=bearer(token), timeout=10),
        httpx.get(f"{key_server.url}/snapshot/cam_1", params={"token": token}, timeout=10),
    ):
        assert response.status_code == 401, response.text
        body = response.json()
        assert body["error"] == "unauthorized"
        assert body["message"].startswith(message), body["message"]
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_a_subject_named_like_a_configured_user_gets_only_its_token(key_server, rsa_key):
    """POST /api/session with a JWT hands back the JWT: a session token would name the
    configured user 'cam' and carry its permissions (publish, metrics)."""
    token = sign(rsa_key, sub="cam")
    session = httpx.post(f"{key_server.url}/api/session", headers=bearer(token), timeout=10)
    assert session.status_code == 200
    body = session.json()
    assert body["user"] == "cam" and body["token"] == token
    assert body["permissions"] == VIEW_CAMS
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert body["expires"] == datetime.fromtimestamp(exp, timezone.utc).isoformat()
    with httpx.Client(headers=bearer(body["token"]), timeout=10) as client:
        assert publish(key_server.url, "cam_1", make_jpeg(seed=1), client).status_code == 403
        assert client.get(f"{key_server.url}/metrics").status_code == 403


def test_failed_tokens_are_counted(key_server, rsa_key):
    before = scrape(key_server.url)["robogpt_video_auth_failures_total"]
    for _ in range(3):
        expired = sign(rsa_key, exp=int(time.time()) - 3600)
        assert httpx.get(f"{key_server.url}/snapshot/cam_1", headers=bearer(expired),
                         timeout=10).status_code == 401
    assert scrape(key_server.url)["robogpt_video_auth_failures_total"] == before + 3


def test_an_ec_key_from_a_file(start_server, tmp_path, ec_key, rsa_key):
    key_file = tmp_path / "idp.pem"
    key_file.write_text(pem(ec_key))
    server = start_server(jwt_config(public_key_file=str(key_file)))
    with httpx.Client(headers=CAM, timeout=10) as client:
        assert publish(server.url, "cam_1", make_jpeg(seed=4), client).status_code == 200
    ok = httpx.get(f"{server.url}/snapshot/cam_1", headers=bearer(sign(ec_key, alg="ES256")),
                   timeout=10)
    assert ok.status_code == 200 and ok.content == make_jpeg(seed=4)
    # RS256 is in the default algorithms, but does not fit an EC key.
    rs = httpx.get(f"{server.url}/snapshot/cam_1", headers=bearer(sign(rsa_key)), timeout=10)
    assert rs.status_code == 401
    assert rs.json()["message"] == "the token's algorithm RS256 does not fit its key"


# --- (b) keys from a JWKS endpoint -------------------------------------------------

def test_jwks_keys_are_fetched_once_cached_and_rotated(start_server, jwks_server, rsa_key, ec_key):
    jwks = jwks_server([jwk(rsa_key, "k1")])
    server = start_server(jwt_config(jwks_url=jwks.url))
    with httpx.Client(headers=CAM, timeout=10) as client:
        assert publish(server.url, "cam_1", make_jpeg(seed=5), client).status_code == 200
    assert jwks.requests == 0  # fetched when a JWT first needs a key, not before
    url = f"{server.url}/snapshot/cam_1"
    with httpx.Client(timeout=10) as client:
        for n in range(20):
            token = sign(rsa_key, kid="k1", sub=f"robot{n}")
            assert client.get(url, headers=bearer(token)).status_code == 200
        assert jwks.requests == 1
        # Rotation: the provider adds an EC key; its first token makes one fetch.
        jwks.document = {"keys": [jwk(rsa_key, "k1"), jwk(ec_key, "k2", alg="ES256")]}
        for n in range(10):
            for token in (sign(ec_key, "ES256", kid="k2"), sign(rsa_key, kid="k1")):
                assert client.get(url, headers=bearer(token)).status_code == 200
        assert jwks.requests == 2
        # A kid the endpoint does not have: one fetch to be sure, then 401.
        unknown = client.get(url, headers=bearer(sign(rsa_key, kid="k9")))
        assert unknown.status_code == 401
        assert unknown.json()["message"] == "the token's key id (kid) 'k9' is not in the JWKS"
        assert jwks.requests == 3
        # A key's JWK "alg" binds it: k2 is ES256 only.
        wrong = client.get(url, headers=bearer(sign(rsa_key, kid="k2")))
        assert wrong.status_code == 401
        assert wrong.json()["message"] == "the token's algorithm RS256 does not fit its key"
    samples = scrape(server.url)
    assert samples["robogpt_video_jwks_fetches_total"] == 3
    assert samples["robogpt_video_jwks_fetch_failures_total"] == 0


def test_jwks_unreachable_is_503_logged_once_and_not_a_failed_sign_in(start_server, hold_port,
                                                                     rsa_key):
    port = hold_port()  # bound, not listening: connections are refused
    config = jwt_config(jwks_url=f"http://127.0.0.1:{port}/jwks.json")
    config["auth"]["max_failures_per_minute"] = 2
    server = start_server(config)
    token = sign(rsa_key, kid="k1")
    for _ in range(4):
        response = httpx.get(f"{server.url}/snapshot/cam_1", headers=bearer(token), timeout=10)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "jwks_unavailable"
        assert response.headers["Retry-After"] == "10"
        assert "WWW-Authenticate" not in response.headers
    samples = scrape(server.url)
    assert samples["robogpt_video_auth_failures_total"] == 0  # no 429 for the fleet
    assert samples["robogpt_video_jwks_fetch_failures_total"] == 4
    assert server.output().count("cannot fetch the JWKS from") == 1


def test_a_jwks_that_answers_badly_then_recovers(start_server, jwks_server, rsa_key):
    jwks = jwks_server([jwk(rsa_key, "k1")])
    jwks.status = 500
    server = start_server(jwt_config(jwks_url=jwks.url))
    url, token = f"{server.url}/snapshot/cam_1", sign(rsa_key, kid="k1")
    with httpx.Client(headers=CAM, timeout=10) as client:
        assert publish(server.url, "cam_1", make_jpeg(seed=6), client).status_code == 200
    assert httpx.get(url, headers=bearer(token), timeout=10).status_code == 503
    jwks.status, jwks.document = 200, {"keys": "not a list"}
    assert httpx.get(url, headers=bearer(token), timeout=10).status_code == 503
    jwks.document = {"keys": [jwk(rsa_key, "k1")]}
    assert httpx.get(url, headers=bearer(token), timeout=10).status_code == 200
    assert jwks.requests == 3
    log = server.output()
    assert log.count("cannot fetch the JWKS from") == 1 and "HTTP 500" in log
    assert "fetched the JWKS from" in log


# --- the key cache, in process, on a clock of the test's own -----------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jwks_cache_expiry_stale_keys_revocation_and_fetch_budget(jwks_server, rsa_key, ec_key):
    jwks = jwks_server([jwk(rsa_key, "k1")])
    clock = Clock()
    keys = JwksKeys(jwks.url, lifespan=300, clock=clock)

    async def main():
        # Many requests at once on a cold cache: one fetch.
        found = await asyncio.gather(*(keys.key("k1") for _ in range(20)))
        assert jwks.requests == 1 and len({id(k) for k in found}) == 1
        clock.now += 299
        await keys.key("k1")
        assert jwks.requests == 1
        clock.now += 2  # past jwks_cache_seconds: fetched again
        await keys.key("k1")
        assert jwks.requests == 2
        # The endpoint fails: the last keys stay in use.
        jwks.status = 503
        clock.now += 301
        assert (await keys.key("k1")).key is not None
        assert (jwks.requests, keys.failures) == (3, 1)
        # It works again and no longer has k1 (revoked): k1 is refused once refetched.
        jwks.status, jwks.document = 200, {"keys": [jwk(ec_key, "k2")]}
        with pytest.raises(Unauthorized, match="'k1' is not in the JWKS"):
            await keys.key("k1")
        assert jwks.requests == 4
        # Made-up kids: fetches stop at the budget for the minute, then resume.
        clock.now += 60
        for n in range(3 * MAX_FETCHES_PER_MINUTE):
            with pytest.raises(Unauthorized):
                await keys.key(f"made-up-{n}")
        assert jwks.requests == 4 + MAX_FETCHES_PER_MINUTE
        clock.now += 59
        with pytest.raises(Unauthorized):
            await keys.key("made-up")
        assert jwks.requests == 4 + MAX_FETCHES_PER_MINUTE
        clock.now += 1
        await keys.key("k2")  # in the cached set: no fetch
        with pytest.raises(Unauthorized):
            await keys.key("made-up")
        assert jwks.requests == 4 + MAX_FETCHES_PER_MINUTE + 1

    asyncio.run(main())


def test_a_fetch_cancelled_with_its_request_leaves_the_next_one_to_fetch(jwks_server, rsa_key):
    jwks = jwks_server([jwk(rsa_key, "k1")])
    jwks.gate = threading.Event()
    keys = JwksKeys(jwks.url, lifespan=300)

    async def main():
        first = asyncio.create_task(keys.key("k1"))
        assert await asyncio.to_thread(jwks.entered.wait, 10)  # its fetch reached the endpoint
        second = asyncio.create_task(keys.key("k1"))  # runs before first is cancelled: waits
        first.cancel()
        jwks.gate.set()
        assert (await second).key is not None
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (keys.fetches, keys.failures, jwks.requests) == (2, 0, 2)

    asyncio.run(main())


def test_no_keys_yet_and_the_endpoint_down_is_unavailable(hold_port):
    keys = JwksKeys(f"http://127.0.0.1:{hold_port()}/jwks", lifespan=300)

    async def main():
        with pytest.raises(JwksUnavailable):
            await keys.key("k1")
        assert (keys.fetches, keys.failures) == (1, 1)

    asyncio.run(main())


def test_a_jwks_without_kids_serves_its_single_key(jwks_server, ec_key):
    public = jwk(ec_key, "unused")
    del public["kid"]
    jwks = jwks_server([public, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA"}, "junk"])
    settings = load_settings(None, jwt_config(jwks_url=jwks.url))
    verifier = JwtVerifier(settings.auth.jwt)

    async def main():
        principal = await verifier.verify(sign(ec_key, "ES256"))
        assert principal.name == "robot7" and principal.grants == (("view", "cam_*"),)

    asyncio.run(main())


def test_jwt_verification_never_blocks_the_event_loop(tmp_path, jwks_server, rsa_key, ec_key):
    """The JWKS fetch and the checks run on the loop: blockbuster raises on a blocking call."""
    from test_event_loop import Errors, InProcessServer

    jwks = jwks_server([jwk(rsa_key, "k1")])
    settings = load_settings(None, {
        **jwt_config(jwks_url=jwks.url),
        "server": {"host": "127.0.0.1", "port": 0},
        "recording": {"enabled": False, "directory": str(tmp_path / "recordings")},
        "logging": {"file": None},
    })
    server = InProcessServer(settings)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    server.thread.start()
    buster = BlockBuster(scanned_modules=["robogpt_video"])
    try:
        wait_for(server.started.is_set, what="the in-process server")
        buster.activate()
        url = f"http://127.0.0.1:{server.port}"
        publisher = sign(rsa_key, kid="k1", permissions=[{"action": "publish"}])
        with httpx.Client(timeout=10) as client:
            files = {"frame": ("frame.jpg", make_jpeg(seed=7), "image/jpeg")}
            assert client.post(f"{url}/publish/cam_1", files=files,
                               headers=bearer(publisher)).status_code == 200
            jwks.document = {"keys": [jwk(rsa_key, "k1"), jwk(ec_key, "k2")]}
            viewer = sign(ec_key, "ES256", kid="k2")
            assert client.get(f"{url}/snapshot/cam_1", headers=bearer(viewer)).status_code == 200
            with client.stream("GET", f"{url}/stream/cam_1?token={viewer}") as view:
                assert view.status_code == 200
                next(view.iter_raw())
        assert jwks.requests == 2
    finally:
        buster.deactivate()
        server.stop()
        logging.getLogger().removeHandler(errors)
    assert not server.thread.is_alive()
    blocking = [r.getMessage() + str(r.exc_info) for r in errors.records
                if "Blocking" in r.getMessage() + str(r.exc_info)]
    assert blocking == []


# --- configuration -------------------------------------------------------------------

def test_jwt_is_off_by_default_and_counts_as_access_control(rsa_key):
    assert load_settings(None).auth.jwt is None
    settings = load_settings(None, {"auth": {"jwt": {"public_key": pem(rsa_key)}}})
    assert settings.auth.enabled
    jwt_settings = settings.auth.jwt
    assert jwt_settings.algorithms == ["RS256", "ES256", "EdDSA"]
    assert (jwt_settings.claim, jwt_settings.name_claim) == ("permissions", "sub")
    assert (jwt_settings.leeway_seconds, jwt_settings.jwks_cache_seconds) == (30, 300)
    assert Authenticator(settings.auth, JwtVerifier(jwt_settings)).enabled


def _private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


BAD_CONFIGS = {
    "no key source": ({}, "auth.jwt: Value error, needs exactly one of jwks_url, public_key"),
    "two key sources": ({"jwks_url": "https://idp.test/jwks", "public_key": "PEM"},
                        "(has jwks_url, public_key)"),
    "plain http": ({"jwks_url": "http://idp.test/jwks"},
                   "auth.jwt.jwks_url: Value error, must be https://"),
    "not a URL": ({"jwks_url": "file:///etc/jwks.json"}, "auth.jwt.jwks_url"),
    "alg none": ({"jwks_url": "https://idp.test/j", "algorithms": ["none"]},
                 "auth.jwt.algorithms: Value error, 'none' would accept unsigned tokens"),
    "HS256": ({"jwks_url": "https://idp.test/j", "algorithms": ["RS256", "HS256"]},
              "HS256 is a shared-secret algorithm"),
    "unknown alg": ({"jwks_url": "https://idp.test/j", "algorithms": ["XY9"]},
                    "'XY9' is not one of RS256"),
    "no algorithms": ({"jwks_url": "https://idp.test/j", "algorithms": []}, "auth.jwt.algorithms"),
    "not PEM": ({"public_key": "hello"}, "public_key is not a PEM public key"),
    "missing file": ({"public_key_file": "/nonexistent/idp.pem"},
                     "cannot read public_key_file /nonexistent/idp.pem: No such file"),
    "negative leeway": ({"jwks_url": "https://idp.test/j", "leeway_seconds": -1},
                        "auth.jwt.leeway_seconds"),
    "unknown key": ({"jwks_url": "https://idp.test/j", "secret": "x"},
                    "auth.jwt.secret: unknown key"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_jwt_settings_name_the_key(case):
    jwt_settings, message = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"auth": {"jwt": jwt_settings}})
    assert message in str(info.value)


def test_key_errors_name_the_key_and_never_echo_it(rsa_key, ec_key):
    private = _private_pem(rsa_key)
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"auth": {"jwt": {"public_key": private}}})
    assert "public_key holds a private key" in str(info.value)
    assert private.splitlines()[1] not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"auth": {"jwt": {"public_key": pem(ec_key), "algorithms": ["RS256"]}}})
    assert "none of algorithms ['RS256'] fits the" in str(info.value)
    assert "(it takes ES256)" in str(info.value)
    assert pem(ec_key).splitlines()[1] not in str(info.value)


def test_audience_unset_refuses_tokens_that_name_one_and_empty_permissions_grant_nothing(
        rsa_key):
    settings = load_settings(None, {"auth": {"jwt": {"public_key": pem(rsa_key)}}})
    verifier = JwtVerifier(settings.auth.jwt)

    async def main():
        with pytest.raises(Unauthorized, match=r"audience \(aud\) is not accepted"):
            await verifier.verify(sign(rsa_key))
        principal = await verifier.verify(sign(rsa_key, aud=None, iss=None, permissions=[]))
        assert (principal.name, principal.grants) == ("robot7", ())
        assert not principal.may("view", "cam_1")

    asyncio.run(main())


def test_loopback_http_and_ed25519_keys_are_accepted():
    assert load_settings(None, {"auth": {"jwt": {"jwks_url": "http://localhost:8080/j"}}}).auth.jwt
    assert load_settings(None, {"auth": {"jwt": {"jwks_url": "http://[::1]/j"}}}).auth.jwt
    key = ed25519.Ed25519PrivateKey.generate()
    settings = load_settings(None, jwt_config(public_key=pem(key)))

    async def main():
        token = jwt.encode(good_claims(), key, algorithm="EdDSA")
        principal = await JwtVerifier(settings.auth.jwt).verify(token)
        assert principal.name == "robot7" and principal.grants == (("view", "cam_*"),)

    asyncio.run(main())


def test_without_auth_jwt_pyjwt_is_not_imported(tmp_path):
    """PyJWT and cryptography cost ≈9 MB of memory: loaded only when auth.jwt is set."""
    code = (
        "import sys; from robogpt_video.config import Settings; "
        "from robogpt_video.web import create_app; create_app(Settings()); "
        "assert 'jwt' not in sys.modules, 'jwt imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
