"""Access control's behaviour on real servers (issue 14, items 4-6).

Credentials (Basic, Bearer, ``?token=``, session tokens), the anonymous user, filtered
listings, /health, the per-address budgets and trusted proxies, secrets that never
leak (logs, error bodies, /metrics, config errors), CORS origins and the audit line.
The permission of every route is ``test_access_matrix.py``'s.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import ServerProcess, iter_parts, make_jpeg, wait_for

JPEG = make_jpeg(160, 120)
PASSWORD = "viewer-password-7a2d"
TOKENS = {user: f"token-of-{user}-e49b" for user in ("viewer", "pub", "player", "admin", "metrics")}


def bearer(user: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def basic(user: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def grants(*pairs: tuple[str, str]) -> list[dict]:
    return [{"action": action, "streams": streams} for action, streams in pairs]


def publish(server, name: str, jpeg: bytes = JPEG, headers: dict | None = None,
            client: httpx.Client | None = None) -> httpx.Response:
    """One raw JPEG POST, as the user ``pub`` unless ``headers`` say otherwise."""
    headers = {"Content-Type": "image/jpeg", **(bearer("pub") if headers is None else headers)}
    return (client or httpx).post(f"{server.url}/publish/{name}", content=jpeg,
                                  headers=headers, timeout=10)


def counter(server, name: str, headers: dict | None = None) -> float:
    """The value of the counter sample ``name`` (e.g. ``..._total``) in /metrics."""
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not in /metrics")


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 on Linux):
    each budget test spends the budget of an address of its own."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def module_server(tmp_path_factory, name: str, config: dict):
    server = ServerProcess(tmp_path_factory.mktemp(name), config)
    try:
        yield server.start()
    finally:
        server.stop()


# --- credentials, sessions, the anonymous user, listings, /health: one server ----------

USERS = [
    {"name": "viewer", "password": PASSWORD, "token": TOKENS["viewer"],
     "permissions": grants(("view", "cam_*"))},
    {"name": "pub", "token": TOKENS["pub"], "permissions": grants(("publish", "*"))},
    {"name": "player", "token": TOKENS["player"], "permissions": grants(("playback", "cam_*"))},
    {"name": "admin", "token": TOKENS["admin"], "permissions": grants(("admin", "*"))},
    {"name": "metrics", "token": TOKENS["metrics"], "permissions": grants(("metrics", "*"))},
    {"name": "any", "permissions": grants(("view", "lobby_*"))},
]


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    # The default cors_origins ["*"]; failures are made on purpose here: no budget.
    yield from module_server(tmp_path_factory, "access", {
        "auth": {"users": USERS, "max_failures_per_minute": 100000}})


@pytest.mark.parametrize(("user", "secret", "status"), [
    ("viewer", PASSWORD, 200),
    ("viewer", TOKENS["viewer"], 200),  # a token works as the Basic password
    ("viewer", "not-the-password", 401),
    ("pub", TOKENS["viewer"], 401),  # ... but only the user's own
    ("nobody", PASSWORD, 401),
])
def test_basic_credentials(main, user, secret, status):
    assert publish(main, "cam_basic").status_code == 200
    response = httpx.get(f"{main.url}/snapshot/cam_basic", headers=basic(user, secret))
    assert response.status_code == status, response.text
    if status == 200:
        assert response.content == JPEG
    else:
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_query_token_serves_an_img_style_get(main):
    assert publish(main, "cam_img").status_code == 200
    image = httpx.get(f"{main.url}/snapshot/cam_img", params={"token": TOKENS["viewer"]})
    assert image.status_code == 200 and image.content == JPEG
    assert image.headers["content-type"] == "image/jpeg"
    for wrong in ("token-of-nobody", PASSWORD):  # a password is no token
        refused = httpx.get(f"{main.url}/snapshot/cam_img", params={"token": wrong})
        assert error_of(refused, 401) == "unauthorized"


def test_session_token_from_basic_works_in_the_query_and_as_bearer(main):
    assert publish(main, "cam_session").status_code == 200
    assert error_of(httpx.post(f"{main.url}/api/session"), 401) == "unauthorized"
    session = httpx.post(f"{main.url}/api/session", headers=basic("viewer", PASSWORD))
    assert session.status_code == 200, session.text
    body = session.json()
    assert body["user"] == "viewer"
    # Its own grant, and what anyone may do without credentials.
    assert body["permissions"] == [{"action": "view", "streams": "cam_*"},
                                   {"action": "view", "streams": "lobby_*"}]
    token = body["token"]

    with httpx.stream("GET", f"{main.url}/stream/cam_session", params={"token": token},
                      timeout=10) as live:
        assert live.status_code == 200
        _, frame = next(iter_parts(live.iter_raw()))
    assert frame == JPEG
    stats = httpx.get(f"{main.url}/api/streams/cam_session/stats",
                      headers={"Authorization": f"Bearer {token}"})
    assert stats.status_code == 200 and stats.json()["total_frames"] >= 1
    # It stands for the viewer and no more; altered, it is no token at all.
    denied = publish(main, "cam_session", headers={"Authorization": f"Bearer {token}"})
    assert error_of(denied, 403) == "forbidden"
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    refused = httpx.get(f"{main.url}/snapshot/cam_session", params={"token": altered})
    assert error_of(refused, 401) == "unauthorized"


def test_anonymous_user_views_lobby_streams_only(main):
    for name in ("lobby_1", "cam_private"):
        assert publish(main, name).status_code == 200
    assert httpx.get(f"{main.url}/snapshot/lobby_1").content == JPEG
    with httpx.stream("GET", f"{main.url}/stream/lobby_1", timeout=10) as live:
        assert live.status_code == 200
        assert next(iter_parts(live.iter_raw()))[1] == JPEG
    for path in ("/snapshot/cam_private", "/stream/cam_private", "/api/streams/cam_private/stats"):
        refused = httpx.get(f"{main.url}{path}")
        assert error_of(refused, 401) == "unauthorized", path
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")


def _stream_names(server, headers: dict | None = None) -> set[str]:
    listing = httpx.get(f"{server.url}/api/streams", headers=headers, timeout=10)
    assert listing.status_code == 200, listing.text
    assert listing.json()["count"] == len(listing.json()["streams"])
    return {stream["name"] for stream in listing.json()["streams"]}


def test_stream_listing_shows_only_what_the_principal_may_view(main):
    for name in ("lobby_listed", "cam_listed", "other_listed"):
        assert publish(main, name).status_code == 200
    anonymous = _stream_names(main)
    assert "lobby_listed" in anonymous
    assert all(name.startswith("lobby_") for name in anonymous), anonymous
    viewer = _stream_names(main, basic("viewer", PASSWORD))
    assert {"cam_listed", "lobby_listed"} <= viewer  # signed in, it keeps what anyone sees
    assert all(name.startswith(("cam_", "lobby_")) for name in viewer), viewer


def test_a_signed_in_user_keeps_what_needs_no_credentials(main):
    """The user ``any``'s grants hold for everyone: signing in never takes them away
    (a viewer of cam_* was refused the lobby it could watch anonymously)."""
    assert publish(main, "lobby_signed").status_code == 200
    for credentials in (basic("viewer", PASSWORD), bearer("player")):
        response = httpx.get(f"{main.url}/snapshot/lobby_signed", headers=credentials)
        assert response.status_code == 200 and response.content == JPEG


def test_a_session_token_does_not_renew_itself(main):
    first = httpx.post(f"{main.url}/api/session", headers=basic("viewer", PASSWORD)).json()
    again = httpx.post(f"{main.url}/api/session",
                       headers={"Authorization": f"Bearer {first['token']}"})
    assert again.status_code == 200
    assert again.json()["token"] == first["token"]
    assert again.json()["expires"] == first["expires"]


def test_recordings_listing_shows_only_permitted_streams(main):
    for name in ("cam_rec", "other_rec"):
        assert publish(main, name).status_code == 200
    # other_rec's file exists on disk; the player may list cam_* only.
    wait_for(lambda: list((main.recordings / "other_rec").glob("*.mp4")), what="other_rec's file")

    def listed(**params) -> list[str]:
        response = httpx.get(f"{main.url}/api/recordings", params=params,
                             headers=bearer("player"), timeout=10)
        assert response.status_code == 200, response.text
        return [rec["stream_name"] for rec in response.json()["recordings"]]

    names = wait_for(lambda: (names := listed()) and "cam_rec" in names and names,
                     what="cam_rec listed")
    assert all(name.startswith("cam_") for name in names), names
    assert listed(stream="other_rec") == []
    assert error_of(httpx.get(f"{main.url}/api/recordings"), 401) == "unauthorized"


def test_health_details_only_with_credentials(main):
    anonymous = httpx.get(f"{main.url}/health")
    assert anonymous.status_code == 200
    assert set(anonymous.json()) == {"status"}
    signed_in = httpx.get(f"{main.url}/health", headers=basic("viewer", PASSWORD))
    assert signed_in.status_code == 200
    assert {"status", "active_streams", "max_streams", "version", "uptime_seconds"} <= set(
        signed_in.json())


@pytest.mark.parametrize("authorization", [
    b"Bearer token-\xff",  # not UTF-8
    b"Bearer rgv1.\xff.\xfe",  # a session token that is not UTF-8
    "Basic vi\u00e9wer".encode(),  # not base64
    b"Basic " + base64.b64encode(b"viewer:\xff"),  # base64 of bytes that are not UTF-8
], ids=["bearer", "session", "basic-not-ascii", "basic-not-utf8"])
def test_credentials_that_are_not_utf8_are_wrong_credentials(main, authorization):
    failures = counter(main, "robogpt_video_auth_failures_total", bearer("metrics"))
    response = httpx.get(f"{main.url}/health", headers={"Authorization": authorization})
    assert error_of(response, 401) == "unauthorized"
    assert counter(main, "robogpt_video_auth_failures_total", bearer("metrics")) == failures + 1


def test_auth_failures_are_counted_in_metrics(main):
    before = counter(main, "robogpt_video_auth_failures_total", bearer("metrics"))
    for headers in ({"Authorization": "Bearer token-of-nobody"}, basic("viewer", "wrong")):
        assert httpx.get(f"{main.url}/api/streams", headers=headers).status_code == 401
    assert httpx.get(f"{main.url}/api/streams/cam_x/stats").status_code == 401  # no credentials
    after = counter(main, "robogpt_video_auth_failures_total", bearer("metrics"))
    assert after == before + 2


# --- CORS and origins ------------------------------------------------------------------

FOREIGN = "https://evil.example"


def _ws_status(server, path: str, headers: dict, origin: str) -> int:
    try:
        with connect(f"ws://127.0.0.1:{server.port}{path}", origin=origin,
                     additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_with_auth_any_origin_may_read_but_only_the_own_origin_may_change_state(main):
    """cors_origins ["*"] with access control on: a page of any origin may read answers
    (without credentials: never Access-Control-Allow-Credentials), but only this server's
    own pages may publish or delete with a browser's saved credentials."""
    assert publish(main, "cam_origin").status_code == 200
    read = httpx.get(f"{main.url}/api/streams", headers={"Origin": FOREIGN})
    assert read.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in read.headers

    deleted = httpx.delete(f"{main.url}/api/streams/cam_origin",
                           headers={**bearer("admin"), "Origin": FOREIGN})
    assert error_of(deleted, 403) == "origin_not_allowed"
    sent = publish(main, "cam_origin", make_jpeg(seed=5), {**bearer("pub"), "Origin": FOREIGN})
    assert error_of(sent, 403) == "origin_not_allowed"
    assert _ws_status(main, "/ws/publish/cam_origin", bearer("pub"), FOREIGN) == 403
    stats = httpx.get(f"{main.url}/api/streams/cam_origin/stats", headers=bearer("viewer"))
    assert stats.json()["total_frames"] == 1  # neither deleted nor published to

    own = f"http://127.0.0.1:{main.port}"
    assert publish(main, "cam_origin", headers={**bearer("pub"), "Origin": own}).status_code == 200
    assert _ws_status(main, "/ws/publish/cam_origin", bearer("pub"), own) == 101
    deleted = httpx.delete(f"{main.url}/api/streams/cam_origin",
                           headers={**bearer("admin"), "Origin": own})
    assert deleted.status_code == 200, deleted.text


OPS = "https://ops.example"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """No users (access control off), CORS for one origin."""
    yield from module_server(tmp_path_factory, "cors", {"server": {"cors_origins": [OPS]}})


@pytest.mark.parametrize("path", ["/api/streams", "/health", "/snapshot/cors_cam",
                                  "/api/streams/cors_cam/stats", "/snapshot/no_such_cam"])
@pytest.mark.parametrize("origin", [OPS, FOREIGN])
def test_cors_answers_only_a_listed_origin(restricted, path, origin):
    assert publish(restricted, "cors_cam", headers={}).status_code == 200
    response = httpx.get(f"{restricted.url}{path}", headers={"Origin": origin})
    assert response.status_code in (200, 404), response.text
    if origin == OPS:
        assert response.headers["Access-Control-Allow-Origin"] == OPS
        assert "origin" in response.headers["Vary"].lower()
    else:
        assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_page_of_another_origin_cannot_publish_or_delete(restricted):
    assert publish(restricted, "cors_keep", headers={}).status_code == 200
    deleted = httpx.delete(f"{restricted.url}/api/streams/cors_keep", headers={"Origin": FOREIGN})
    assert error_of(deleted, 403) == "origin_not_allowed"
    sent = publish(restricted, "cors_keep", make_jpeg(seed=9), {"Origin": FOREIGN})
    assert error_of(sent, 403) == "origin_not_allowed"
    assert _ws_status(restricted, "/ws/publish/cors_keep", {}, FOREIGN) == 403
    stats = httpx.get(f"{restricted.url}/api/streams/cors_keep/stats").json()
    assert stats["total_frames"] == 1
    assert httpx.get(f"{restricted.url}/snapshot/cors_keep").content == JPEG
    assert publish(restricted, "cors_keep", headers={"Origin": OPS}).status_code == 200
    deleted = httpx.delete(f"{restricted.url}/api/streams/cors_keep", headers={"Origin": OPS})
    assert deleted.status_code == 200, deleted.text


def test_the_servers_own_pages_may_change_state_when_origins_are_restricted(restricted):
    """The dashboard is served from this origin; browsers send Origin on its DELETEs."""
    own = f"http://127.0.0.1:{restricted.port}"
    assert publish(restricted, "cors_own", headers={"Origin": own}).status_code == 200
    deleted = httpx.delete(f"{restricted.url}/api/streams/cors_own", headers={"Origin": own})
    assert deleted.status_code == 200, deleted.text


# --- audit -----------------------------------------------------------------------------


def test_admin_requests_write_an_audit_line(main):
    assert publish(main, "cam_audited").status_code == 200
    deleted = httpx.delete(f"{main.url}/api/streams/cam_audited", headers=bearer("admin"))
    assert deleted.status_code == 200
    log = main.workdir / "logs" / "server.log"
    line = "audit: DELETE /api/streams/cam_audited by admin from 127.0.0.1: 200"
    wait_for(lambda: line in log.read_text(), what="the audit line")


# --- budgets and trusted proxies: one server, each test from an address of its own -----


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    yield from module_server(tmp_path_factory, "budget", {"auth": {
        "users": [
            {"name": "viewer", "token": TOKENS["viewer"], "permissions": grants(("view", "*"))},
            {"name": "pub", "token": TOKENS["pub"], "permissions": grants(("publish", "*"))},
            # Anyone may read /metrics: a request without credentials spends no budget.
            {"name": "any", "permissions": grants(("metrics", "*"))},
        ],
        "max_failures_per_minute": 3,
        "max_refused_publishes_per_minute": 3,
        "trusted_proxies": ["127.0.0.1"],
    }})


WRONG = {"Authorization": "Bearer token-of-nobody"}
FAILURES, LIMITED = "robogpt_video_auth_failures_total", "robogpt_video_requests_limited_total"


def test_failure_budget_counts_wrong_credentials_not_anonymous_requests(budget):
    failures, limited = counter(budget, FAILURES), counter(budget, LIMITED)
    url = f"{budget.url}/api/streams"
    with from_address("127.0.0.3") as client:
        for _ in range(5):  # no credentials: 401, but no failure
            assert client.get(url).status_code == 401
        for _ in range(3):
            assert error_of(client.get(url, headers=WRONG), 401) == "unauthorized"
        spent = client.get(url, headers=WRONG)
        assert error_of(spent, 429) == "too_many_failures"
        assert int(spent.headers["Retry-After"]) >= 1
        # Right credentials from that address are refused too (no oracle for a guess);
        # a request without credentials still gets its challenge.
        assert error_of(client.get(url, headers=bearer("viewer")), 429) == "too_many_failures"
        assert client.get(url).status_code == 401
    with from_address("127.0.0.5") as client:  # another address has its own budget
        assert client.get(url, headers=bearer("viewer")).status_code == 200
    assert counter(budget, FAILURES) == failures + 3
    assert counter(budget, LIMITED) == limited + 2


def test_trusted_proxy_moves_the_count_to_the_forwarded_address(budget):
    url = f"{budget.url}/api/streams"

    def wrong_via(address: str | None) -> httpx.Response:
        headers = {**WRONG, **({"X-Forwarded-For": address} if address else {})}
        return httpx.get(url, headers=headers, timeout=10)  # from 127.0.0.1, trusted

    for _ in range(3):
        assert wrong_via("203.0.113.7").status_code == 401
    assert error_of(wrong_via("203.0.113.7"), 429) == "too_many_failures"
    assert wrong_via("203.0.113.8").status_code == 401  # another client behind the proxy
    assert wrong_via(None).status_code == 401  # the proxy itself
    assert httpx.get(url, headers=bearer("viewer")).status_code == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(budget):
    url = f"{budget.url}/api/streams"
    with from_address("127.0.0.2") as client:
        for n in range(3):
            forged = {**WRONG, "X-Forwarded-For": f"198.51.100.{n + 1}"}
            assert client.get(url, headers=forged).status_code == 401
        forged = {**WRONG, "X-Forwarded-For": "198.51.100.99"}
        assert error_of(client.get(url, headers=forged), 429) == "too_many_failures"


def test_refused_publishes_budget(budget):
    limited = counter(budget, LIMITED)
    with from_address("127.0.0.4") as client:
        for _ in range(3):
            refused = publish(budget, "budget_cam", b"not a jpeg", client=client)
            assert refused.status_code == 400, refused.text
        spent = publish(budget, "budget_cam", b"not a jpeg", client=client)
        assert error_of(spent, 429) == "too_many_refused_publishes"
        assert int(spent.headers["Retry-After"]) >= 1
    with from_address("127.0.0.6") as client:
        assert publish(budget, "budget_cam", client=client).status_code == 200
    assert counter(budget, LIMITED) == limited + 1


def test_publishes_refused_for_want_of_the_permission_spend_that_budget_too(budget):
    """A token without publish on the stream (403) is a refused publish like a bad body."""
    limited = counter(budget, LIMITED)
    with from_address("127.0.0.7") as client:
        for _ in range(3):
            refused = publish(budget, "budget_denied", headers=bearer("viewer"), client=client)
            assert error_of(refused, 403) == "forbidden"
        spent = publish(budget, "budget_denied", headers=bearer("viewer"), client=client)
        assert error_of(spent, 429) == "too_many_refused_publishes"
        assert int(spent.headers["Retry-After"]) >= 1
        # The address's budget is spent, whoever publishes from it.
        assert error_of(publish(budget, "budget_denied", client=client), 429) == \
            "too_many_refused_publishes"
    with from_address("127.0.0.8") as client:
        assert publish(budget, "budget_denied", client=client).status_code == 200
    assert counter(budget, LIMITED) == limited + 2


# --- secrets never leak ----------------------------------------------------------------

SECRET_TOKEN = "s3cret-token-4f0b9a"
SECRET_PASSWORD = "s3cret-password-81cd2e"
WRONG_TOKEN = "s3cret-wrong-token-07aa"
WRONG_PASSWORD = "s3cret-wrong-password-5e11"


def _bearer_of(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_secrets_never_reach_the_log_error_bodies_or_metrics(start_server):
    server = start_server({
        "server": {"debug": True},  # the access log on
        "logging": {"level": "DEBUG"},
        "auth": {"users": [{"name": "viewer", "token": SECRET_TOKEN, "password": SECRET_PASSWORD,
                            "permissions": grants(("view", "*"), ("metrics", "*"),
                                                  ("publish", "*"))}]},
    })
    session = httpx.post(f"{server.url}/api/session", headers=basic("viewer", SECRET_PASSWORD))
    assert session.status_code == 200
    session_token = session.json()["token"]
    secrets = [SECRET_TOKEN, SECRET_PASSWORD, WRONG_TOKEN, WRONG_PASSWORD, session_token,
               *(basic("viewer", p)["Authorization"].split()[1]
                 for p in (SECRET_PASSWORD, WRONG_PASSWORD))]
    assert publish(server, "leak_cam", headers=_bearer_of(SECRET_TOKEN)).status_code == 200
    snapshot, stats = "/snapshot/leak_cam", "/api/streams/no_cam/stats"
    asked = [  # (method, path, request keywords, status)
        ("GET", snapshot, {"headers": _bearer_of(SECRET_TOKEN)}, 200),
        ("GET", snapshot, {"headers": _bearer_of(WRONG_TOKEN)}, 401),
        ("GET", snapshot, {"params": {"token": SECRET_TOKEN}}, 200),
        ("GET", snapshot, {"params": {"token": WRONG_TOKEN}}, 401),
        ("GET", snapshot, {"params": {"token": session_token}}, 200),
        ("GET", snapshot, {"params": {"token": session_token + "x"}}, 401),
        ("GET", snapshot, {"headers": basic("viewer", SECRET_PASSWORD)}, 200),
        ("GET", snapshot, {"headers": basic("viewer", WRONG_PASSWORD)}, 401),
        ("GET", stats, {"params": {"token": SECRET_TOKEN}}, 404),
        ("GET", "/api/streams", {"headers": _bearer_of(WRONG_TOKEN)}, 401),
        ("DELETE", "/api/streams/leak_cam", {"params": {"token": SECRET_TOKEN}}, 403),
        ("GET", "/metrics", {"headers": _bearer_of(SECRET_TOKEN)}, 200),  # the last one
    ]
    texts = {}
    for method, path, keywords, status in asked:
        answer = httpx.request(method, f"{server.url}{path}", timeout=10, **keywords)
        assert answer.status_code == status, f"{method} {path}: {answer.text}"
        if answer.headers["content-type"].startswith(("application/json", "text/")):
            texts[f"the answer to {method} {path}"] = answer.text  # errors and /metrics
        texts[f"the headers of {method} {path}"] = str(answer.headers)
    # The access log is on and has the last request: it is written after the answer.
    log = server.workdir / "logs" / "server.log"
    wait_for(lambda: "GET /metrics" in log.read_text(), what="the access log line of /metrics")
    server.stop()
    texts["log file"] = log.read_text()
    texts["stderr"] = server.output()
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {where}"
    # ... and the log did see those requests.
    assert "/snapshot/leak_cam?token=redacted" in texts["log file"]
    assert "authentication failed" in texts["log file"]


@pytest.mark.parametrize("config", [
    # A user whose token sits under a misspelt key: no secret, and an unknown key.
    {"auth": {"users": [{"name": "bob", "tokn": SECRET_TOKEN}]}},
    {"auth": {"users": [{"name": "bob", "token_sha256": SECRET_TOKEN}]}},  # not hex
    {"auth": [{"name": "bob", "token": SECRET_TOKEN}]},  # users: forgotten
    # A YAML error on the token's own line.
    f'auth:\n  users:\n    - name: bob\n      token: "{SECRET_TOKEN}\n',
], ids=["missing-secret", "sha256-not-hex", "auth-is-a-list", "yaml-error"])
def test_a_config_error_does_not_echo_a_secret(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOGPT_")}
    result = subprocess.run(
        [sys.executable, "-m", "robogpt_video", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert result.returncode != 0
    assert "auth" in result.stderr or "not valid YAML" in result.stderr, result.stderr
    assert SECRET_TOKEN not in result.stderr + result.stdout, result.stderr


def test_an_open_server_does_not_import_limits(tmp_path):
    """The per-minute budgets come with access control; their package (``limits``, ≈50
    modules with OpenTelemetry, ≈1.6 MB) is not loaded without it, and is with it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check = (
        "import sys; from robogpt_video.config import Settings; "
        "from robogpt_video.web import create_app; create_app(Settings({settings})); "
        "assert ('limits' in sys.modules) is {loaded}, sorted(sys.modules)"
    )
    user = "auth={'users': [{'name': 'ops', 'token': 't' * 32, 'permissions': [{'action': 'view'}]}]}"
    for settings, loaded in (("", False), (user, True)):
        subprocess.run([sys.executable, "-c", check.format(settings=settings, loaded=loaded)],
                       check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": repo})
