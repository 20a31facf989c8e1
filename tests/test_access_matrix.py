"""Every route of the app against the permission it needs (issue 14, item 2).

The routes come from the app itself: aiohttp's router and the FastAPI app's routes.
``EXPECTED`` is this test's own table of what each one needs; a route missing from it
fails ``test_every_route_has_an_expected_permission``, so a route added later without a
decision about its permission fails the suite. Then every route × case is one real
request (httpx, or a WebSocket handshake) to one server whose users each hold one
action on ``cam_a*``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import httpx
import pytest
from aiohttp_asgi import ASGIResource
from starlette.routing import Mount
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import ServerProcess, make_jpeg, merge, wait_for
from robogpt_video.auth import Authenticator
from robogpt_video.config import Settings
from robogpt_video.runtime import Runtime
from robogpt_video.web.app import create_api, create_app
from robogpt_video.web.metrics import Metrics

try:  # FastAPI >= 0.137.2 keeps an included router as one node of app.routes
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies every included route into app.routes

    def iter_route_contexts(routes):
        return routes


PUBLIC, SIGNED_IN = "public", "signed_in"
ACTIONS = ("publish", "view", "playback", "admin", "metrics")

#: What each route needs: an action on the stream its path names (on any stream for a
#: path without one), any valid credentials (signed_in), or nothing (public).
EXPECTED = {
    ("POST", "/publish/{name}"): "publish",
    ("PUT", "/publish/{name}"): "publish",
    ("GET", "/ws/publish/{name}"): "publish",
    ("GET", "/ws/view"): "view",
    ("GET", "/stream/{name}"): "view",
    ("HEAD", "/stream/{name}"): "view",
    ("GET", "/snapshot/{name}"): "view",
    ("HEAD", "/snapshot/{name}"): "view",
    ("GET", "/api/streams"): "view",
    ("GET", "/api/streams/{name}/stats"): "view",
    ("GET", "/api/streams/{name}/frames"): "view",
    ("DELETE", "/api/streams/{name}"): "admin",
    ("GET", "/api/recordings"): "playback",
    ("GET", "/api/recordings/{stream}/{file}"): "playback",
    ("HEAD", "/api/recordings/{stream}/{file}"): "playback",
    ("GET", "/api/recordings/{stream}/{file}/play"): "playback",
    ("GET", "/api/recordings/{stream}/{file}/frame"): "playback",
    ("DELETE", "/api/recordings/{stream}/{file}"): "admin",
    ("POST", "/api/clips"): "playback",
    ("GET", "/api/clips/{clip_id}"): "playback",
    ("GET", "/api/clips/{clip_id}.mp4"): "playback",
    ("HEAD", "/api/clips/{clip_id}.mp4"): "playback",
    ("POST", "/api/cleanup/run"): "admin",
    ("GET", "/metrics"): "metrics",
    ("HEAD", "/metrics"): "metrics",
    ("POST", "/api/session"): SIGNED_IN,
    ("GET", "/health"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("HEAD", "/"): PUBLIC,
    ("GET", "/ui/{path}"): PUBLIC,
    ("HEAD", "/ui/{path}"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("HEAD", "/docs"): PUBLIC,
    ("GET", "/docs/assets/{path}"): PUBLIC,
    ("HEAD", "/docs/assets/{path}"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("HEAD", "/openapi.json"): PUBLIC,
}

#: What a permitted request gets once its handler ran (200 unless named here).
PERMITTED_STATUS = {
    ("GET", "/ws/publish/{name}"): 101,  # the handshake
    ("GET", "/ws/view"): 101,
    # cam_a's segment stays open all along (see CONFIG): deleting it is refused.
    ("DELETE", "/api/recordings/{stream}/{file}"): 409,
    # ... and holds no frame yet (its one frame waits for the next to know its duration).
    ("GET", "/api/recordings/{stream}/{file}/frame"): 409,
}

# Users: one per action on cam_a*, each with a token (the viewer with a password too);
# for each action one holding every *other* action on every stream; one holding every
# action on cam_b* only. No anonymous permissions.
OWNER = {"publish": "pub", "view": "viewer", "playback": "player", "admin": "admin",
         "metrics": "metrics"}
PASSWORD = "viewer-password-3c8e"


def token(user: str) -> str:
    return f"token-of-{user}-51f7"


def _user(name: str, grants: list[tuple[str, str]], **secrets) -> dict:
    permissions = [{"action": action, "streams": streams} for action, streams in grants]
    return {"name": name, "token": token(name), "permissions": permissions, **secrets}


USERS = [
    *[_user(OWNER[a], [(a, "cam_a*")], **({"password": PASSWORD} if a == "view" else {}))
      for a in ACTIONS],
    *[_user(f"all_but_{a}", [(other, "*") for other in ACTIONS if other != a]) for a in ACTIONS],
    *[_user(f"every_{a}", [(a, "*")]) for a in ACTIONS],
    _user("cam_b_all", [(a, "cam_b*") for a in ACTIONS]),
]
CONFIG = {
    # Failures are what half of this matrix makes: the budget has its own tests.
    "auth": {"users": USERS, "max_failures_per_minute": 100000},
    # cam_a and its recording's segment stay open for the whole module.
    "streams": {"timeout_seconds": 3600},
    "recording": {"segment_seconds": 3600, "idle_close_seconds": 3600},
}
JPEG = make_jpeg(160, 120)


def bearer(user: str) -> dict:
    return {"Authorization": f"Bearer {token(user)}"}


def basic(user: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


# --- the route table ------------------------------------------------------------------


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the app built from ``settings`` serves."""
    found = set()
    for route in create_app(settings).router.routes():
        if route.method == "*" or isinstance(route.resource, ASGIResource):
            continue  # the 405/preflight catch-alls; the FastAPI app is read below
        found.add((route.method, route.resource.canonical))
    # The FastAPI app behind the ASGIResource, built the way create_app builds it.
    runtime = Runtime(settings)
    api_app = create_api(settings, runtime, Metrics(runtime), Authenticator(settings.auth))
    for route in iter_route_contexts(api_app.routes):
        path = getattr(route, "path", None)
        assert path is not None, f"cannot read the path of FastAPI route {route!r}"
        if isinstance(getattr(route, "original_route", route), Mount):
            found |= {("GET", f"{path}/{{path}}"), ("HEAD", f"{path}/{{path}}")}  # files
        else:
            found |= {(method, path) for method in getattr(route, "methods", None) or {"WS"}}
    return found


def test_every_route_has_an_expected_permission(tmp_path):
    settings = Settings(**merge(CONFIG, {"recording": {"directory": str(tmp_path)},
                                         "logging": {"file": None}}))
    served = served_routes(settings)
    missing = sorted(served - EXPECTED.keys())
    assert not missing, (
        "routes without a permission in EXPECTED (decide what each needs, give it a rule "
        "in web/access.py, add it here): " + ", ".join(f"{m} {p}" for m, p in missing))
    stale = sorted(EXPECTED.keys() - served)
    assert not stale, "EXPECTED names routes the app no longer serves: " + ", ".join(
        f"{m} {p}" for m, p in stale)


# --- the matrix -----------------------------------------------------------------------


#: Routes that act on every stream at once: the action must be granted on "*".
EVERY_STREAM = {("POST", "/api/cleanup/run"), ("GET", "/metrics"), ("HEAD", "/metrics")}


def _cases(method: str, path: str, action: str) -> dict[str, int | None]:
    """Each case of a route: the status it is refused with, or None (permitted)."""
    if action == PUBLIC:
        return {"anonymous": None, "wrong_token": 401, "wrong_password": 401,
                "permitted_bearer": None}
    cases = {"anonymous": 401, "wrong_token": 401, "wrong_password": 401}
    if action != SIGNED_IN:
        cases["other_action"] = 403
        if "{name}" in path or "{stream}" in path:
            cases["other_stream"] = 403
        if (method, path) in EVERY_STREAM:  # the action on cam_a* only is not enough
            cases["some_streams"] = 403
    return {**cases, "permitted_bearer": None, "permitted_basic": None}


def _credentials(method: str, path: str, case: str, action: str) -> dict:
    user = OWNER.get(action, "viewer")  # signed_in and public: any user will do
    if (method, path) in EVERY_STREAM:
        user = f"every_{action}"
    return {
        "anonymous": lambda: {},
        "wrong_token": lambda: {"Authorization": "Bearer token-of-nobody-0000"},
        "wrong_password": lambda: basic("viewer", "not-the-password"),
        "other_action": lambda: bearer(f"all_but_{action}"),
        "other_stream": lambda: bearer("cam_b_all"),
        "some_streams": lambda: bearer(OWNER[action]),
        "permitted_bearer": lambda: bearer(user),
        # Basic with the password, or with the token as the password.
        "permitted_basic": lambda: basic(user, PASSWORD if user == "viewer" else token(user)),
    }[case]()


MATRIX = [
    pytest.param(method, path, action, case, refused, id=f"{method} {path} {case}")
    for (method, path), action in sorted(EXPECTED.items())
    for case, refused in _cases(method, path, action).items()
]


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes


@dataclass
class Objects:
    """The real things the paths name."""

    server: ServerProcess
    recording: str  # a file of cam_a's
    clip: dict  # the request and id of a finished clip of cam_a_clip


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("matrix"), CONFIG)
    try:
        server.start()
        published = httpx.post(f"{server.url}/publish/cam_a", content=JPEG, timeout=10,
                               headers={**bearer("pub"), "Content-Type": "image/jpeg"})
        assert published.status_code == 200, published.text

        def recording() -> str | None:
            listing = httpx.get(f"{server.url}/api/recordings", params={"stream": "cam_a"},
                                headers=bearer("player"), timeout=10).json()
            return listing["recordings"][0]["file"] if listing["count"] else None

        yield Objects(server, wait_for(recording, what="a recording of cam_a"), _clip(server))
    finally:
        server.stop()


def _clip(server: ServerProcess) -> dict:
    """A finished clip of cam_a_clip, whose recording is closed: asking for it again
    answers from the cache (200) whoever asks first."""
    with httpx.Client(timeout=10) as client:
        for seed in range(3):
            published = client.post(f"{server.url}/publish/cam_a_clip", content=make_jpeg(seed=seed),
                                    headers={**bearer("pub"), "Content-Type": "image/jpeg"})
            assert published.status_code == 200, published.text
        arrived = client.get(f"{server.url}/api/streams/cam_a_clip/frames",
                             headers=bearer("viewer")).json()["frames"]
        assert client.delete(f"{server.url}/api/streams/cam_a_clip",
                             headers=bearer("admin")).status_code == 200

        def closed() -> bool:
            listing = client.get(f"{server.url}/api/recordings", headers=bearer("player"),
                                 params={"stream": "cam_a_clip"}).json()["recordings"]
            return bool(listing) and listing[0]["status"] == "complete"

        wait_for(closed, what="cam_a_clip's recording to close")
        body = {"stream": "cam_a_clip", "start": arrived[0]["timestamp"] - 1,
                "end": arrived[-1]["timestamp"] + 1}
        clip = client.post(f"{server.url}/api/clips", json=body, headers=bearer("player")).json()

        def ready() -> bool:
            return client.get(f"{server.url}/api/clips/{clip['id']}",
                              headers=bearer("player")).json()["status"] == "ready"

        wait_for(ready, timeout=60, what="the clip of cam_a_clip")
        return {"body": body, "id": clip["id"]}


def _url_path(method: str, template: str, objects: Objects) -> str:
    # DELETE /api/streams/{name} deletes a stream of its own, not cam_a.
    name = "cam_a_deleted" if method == "DELETE" else "cam_a"
    # {path}: a file of the dashboard's (/ui/) or of the documentation's (/docs/assets/).
    file = "swagger-ui.css" if template.startswith("/docs/") else "app.js"
    return template.format(name=name, stream="cam_a", file=objects.recording, path=file,
                           clip_id=objects.clip["id"])


def _send(server: ServerProcess, method: str, path: str, headers: dict,
          body: dict | None = None) -> Answer:
    if path.startswith("/ws/"):
        try:
            with connect(f"ws://127.0.0.1:{server.port}{path}", additional_headers=headers,
                         open_timeout=10):
                return Answer(101, {}, b"")
        except InvalidStatus as refused:
            response = refused.response
            return Answer(response.status_code, dict(response.headers), response.body)
    content, params = None, None
    if path.startswith("/publish/"):
        content, headers = JPEG, {**headers, "Content-Type": "image/jpeg"}
    if path == "/api/cleanup/run":
        params = {"dry_run": "true"}
    if path.endswith("/frame"):
        params = {"t": "0"}
    with httpx.stream(method, f"{server.url}{path}", headers=headers, content=content,
                      params=params, json=body, timeout=10) as response:
        # Live answers (MJPEG, replays) are not read: the status says what is checked.
        body = response.read() if response.status_code >= 400 else b""
        return Answer(response.status_code, dict(response.headers), body)


@pytest.mark.parametrize(("method", "path", "action", "case", "refused"), MATRIX)
def test_route_permission(objects, method, path, action, case, refused):
    server = objects.server
    url_path = _url_path(method, path, objects)
    if (method, path) == ("DELETE", "/api/streams/{name}"):
        created = httpx.post(f"{server.url}/publish/cam_a_deleted", content=JPEG, timeout=10,
                             headers={**bearer("pub"), "Content-Type": "image/jpeg"})
        assert created.status_code == 200, created.text
    body = objects.clip["body"] if path == "/api/clips" else None
    answer = _send(server, method, url_path, _credentials(method, path, case, action), body)
    what = f"{method} {url_path} ({case}): {answer.status} {answer.body[:200]!r}"
    if refused is None:
        assert answer.status not in (401, 403), what
        assert answer.status == PERMITTED_STATUS.get((method, path), 200), what
        return
    assert answer.status == refused, what
    if method != "HEAD":  # a HEAD answer has no body
        error = json.loads(answer.body)["error"]
        assert error == ("unauthorized" if refused == 401 else "forbidden"), what
    if refused == 401:
        challenge = {k.lower(): v for k, v in answer.headers.items()}["www-authenticate"]
        assert challenge.startswith("Basic "), what
