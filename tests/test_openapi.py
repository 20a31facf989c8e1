"""The API's documentation works offline and tells the truth (issue 12, item 6).

- ``/docs`` and every file it loads come from this server: the page names no other
  host, and a real headless Chromium (which has no internet here) renders every
  operation while requesting nothing from anywhere else.
- ``/openapi.json`` is a valid OpenAPI document listing every route of the app's route
  table, the aiohttp hot routes and ``/metrics`` too, with the credentials and refusals
  of its rule and the statuses the server really answers, which a real server is made
  to give.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from openapi_spec_validator import validate

from browser import headless_chromium
from helpers import make_jpeg, publish, wait_for
from robogpt_video.config import Settings
from test_access_matrix import EXPECTED, PUBLIC, SIGNED_IN, served_routes

#: Routes that are pages, not API: the documentation itself and the dashboard.
PAGES = {"/docs", "/docs/assets/{path}", "/openapi.json", "/", "/ui/{path}"}
METHODS = ("get", "head", "post", "put", "delete", "options", "patch", "trace")

#: The statuses each operation can answer besides those of access control (401, 403,
#: 429) and of the connection caps (503), which test_every_operation_names_its_refusals
#: checks from the permission table.
STATUSES = {
    ("POST", "/publish/{name}"): {200, 400, 413, 415, 503},
    ("PUT", "/publish/{name}"): {200, 400, 413, 415, 503},
    ("GET", "/ws/publish/{name}"): {101, 400},
    ("GET", "/ws/view"): {101, 400},
    ("GET", "/stream/{name}"): {200, 400, 404, 503},
    ("HEAD", "/stream/{name}"): {200, 400, 404, 503},
    ("GET", "/snapshot/{name}"): {200, 400, 404},
    ("HEAD", "/snapshot/{name}"): {200, 400, 404},
    ("GET", "/api/streams"): {200},
    ("GET", "/api/streams/{name}/stats"): {200, 400, 404},
    ("GET", "/api/streams/{name}/frames"): {200, 400, 404},
    ("DELETE", "/api/streams/{name}"): {200, 400, 404},
    ("GET", "/health"): {200},
    ("POST", "/api/session"): {200},
    ("POST", "/api/cleanup/run"): {200, 400},
    ("GET", "/api/recordings"): {200, 400},
    ("GET", "/api/recordings/{stream}/{file}"): {200, 206, 400, 404, 416},
    ("HEAD", "/api/recordings/{stream}/{file}"): {200, 206, 400, 404, 416},
    ("DELETE", "/api/recordings/{stream}/{file}"): {200, 400, 404, 409},
    ("GET", "/api/recordings/{stream}/{file}/play"): {200, 400, 404, 409},
    ("GET", "/api/recordings/{stream}/{file}/frame"): {200, 400, 404, 409},
    ("POST", "/api/clips"): {200, 202, 400, 404, 503},
    ("GET", "/api/clips/{clip_id}"): {200, 404},
    ("GET", "/api/clips/{clip_id}.mp4"): {200, 206, 400, 404, 409, 416},
    ("HEAD", "/api/clips/{clip_id}.mp4"): {200, 206, 400, 404, 409, 416},
    ("GET", "/metrics"): {200},
    ("HEAD", "/metrics"): {200},
}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


def operations(doc: dict) -> dict[tuple[str, str], dict]:
    """(METHOD, path) -> operation of every operation in the document."""
    return {(method.upper(), path): item[method]
            for path, item in doc["paths"].items() for method in METHODS if method in item}


@pytest.fixture(scope="module")
def doc(shared_server) -> dict:
    response = httpx.get(f"{shared_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()


# --- /docs works offline ----------------------------------------------------------------


class _Links(HTMLParser):
    """Every URL a page makes the browser load: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name):
                self.urls.append(attrs[name])


def test_docs_page_loads_every_file_from_this_server(shared_server):
    page = httpx.get(f"{shared_server.url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text, "an absolute URL"
    links = _Links()
    links.feed(page.text)
    assert sorted(links.urls) == ["/docs/assets/favicon.png", "/docs/assets/swagger-ui-bundle.js",
                                  "/docs/assets/swagger-ui.css"]
    # Each file's type, and a sign that it is what the page expects.
    kinds = {".js": ("javascript", b"SwaggerUIBundle"), ".css": ("text/css", b".swagger-ui"),
             ".png": ("image/png", b"\x89PNG")}
    for url in links.urls:
        asset = httpx.get(shared_server.url + url, timeout=10)
        assert asset.status_code == 200, url
        media, sign = kinds[url[url.rindex("."):]]
        assert media in asset.headers["content-type"] and sign in asset.content, url
    # The page asks for the document at a path of this server.
    assert re.search(r"url: '/openapi\.json'", page.text)
    missing = httpx.get(f"{shared_server.url}/docs/assets/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    # No second page that would need a CDN (ReDoc loads its logo from one).
    assert httpx.get(f"{shared_server.url}/redoc", timeout=10).status_code == 404


def test_swagger_ui_renders_every_operation_in_chromium(shared_server, doc, tmp_path):
    """The page in a real browser, which has no internet here: everything it loaded came
    from this server, and Swagger UI drew one block per operation of the document."""
    with headless_chromium(tmp_path / "chrome") as browser:
        browser.goto(f"{shared_server.url}/docs")
        count = len(operations(doc))
        browser.wait_for(f"document.querySelectorAll('.opblock').length === {count}")
        assert browser.js("document.querySelector('.errors-wrapper')") is None
        title = browser.js("document.querySelector('.info .title').innerText")
        assert title.startswith("robogpt-video")
        paths = browser.js(
            "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.innerText)")
        assert {"/publish/{name}", "/ws/publish/{name}", "/stream/{name}", "/snapshot/{name}",
                "/metrics"} <= {p.replace("\u200b", "") for p in paths}
        loaded = browser.js("performance.getEntriesByType('resource').map(e => e.name)")
        assert f"{shared_server.url}/openapi.json" in loaded
        assert [url for url in loaded if not url.startswith(shared_server.url + "/")] == []


# --- /openapi.json lists every route, truthfully -------------------------------------------


def test_document_is_valid_openapi(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_document_lists_every_route_of_the_app(doc, tmp_path):
    settings = Settings(recording={"directory": str(tmp_path)}, logging={"file": None})
    api = {(m, p) for m, p in served_routes(settings) if p not in PAGES}
    documented = set(operations(doc))
    assert sorted(api - documented) == [], "routes the document does not list"
    assert sorted(documented - api) == [], "operations the app does not serve"
    assert set(STATUSES) == api, "STATUSES of this test names other routes than the app's"


def test_every_operation_documents_its_real_statuses(doc):
    for key, operation in operations(doc).items():
        documented = {int(status) for status in operation["responses"]}
        assert STATUSES[key] <= documented, f"{key}: {sorted(STATUSES[key] - documented)}"
        assert 422 not in documented, key
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "422" not in str(doc["paths"])


def test_every_operation_names_its_credentials_and_refusals(doc):
    """From the permission table of tests/test_access_matrix.py, not from the code."""
    schemes = doc["components"]["securitySchemes"]
    assert schemes["basic"] == {**schemes["basic"], "type": "http", "scheme": "basic"}
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["token"] == {**schemes["token"], "type": "apiKey", "in": "query",
                                "name": "token"}
    for (method, path), operation in operations(doc).items():
        action = EXPECTED[(method, path)]
        responses = operation["responses"]
        assert {"basic": []} in operation["security"], (method, path)
        assert ({} in operation["security"]) == (action == PUBLIC), (method, path)
        assert "401" in responses and "429" in responses and "503" in responses, (method, path)
        assert "Retry-After" in responses["429"]["headers"], (method, path)
        assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
        if action not in (PUBLIC, SIGNED_IN):
            assert f"no `{action}` permission" in responses["403"]["description"], (method, path)
        else:
            assert "403" not in responses, (method, path)
        for status, answer in responses.items():
            if not status.startswith(("4", "5")) or method == "HEAD":
                continue
            assert answer["content"]["application/json"]["schema"] == ERROR_BODY, (
                method, path, status)


def test_hot_routes_have_their_real_bodies(doc):
    publish_op = doc["paths"]["/publish/{name}"]["post"]
    body = publish_op["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["frame"]
    assert body["multipart/form-data"]["schema"]["properties"]["frame"]["format"] == "binary"
    assert {"image/jpeg", "multipart/x-mixed-replace"} <= set(body)
    shapes = publish_op["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert [s["$ref"].rsplit("/", 1)[1] for s in shapes] == ["PublishedFrame", "PublishedFrames"]
    stream = doc["paths"]["/stream/{name}"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["multipart/x-mixed-replace; boundary=frame"]
    snapshot = doc["paths"]["/snapshot/{name}"]["get"]["responses"]["200"]
    assert list(snapshot["content"]) == ["image/jpeg"] and "X-Timestamp" in snapshot["headers"]
    websocket = doc["paths"]["/ws/publish/{name}"]["get"]
    for code in ("1003", "1007", "1008", "1009", "1013"):
        assert f"| {code} |" in websocket["description"], code
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert [media.split(";")[0] for media in metrics] == ["text/plain"]


# --- the documented statuses are the server's ----------------------------------------------


def test_bad_parameters_are_the_documented_400(shared_server, doc):
    url = shared_server.url
    for method, path, query, code in (
        ("POST", "/api/cleanup/run", "dry_run=maybe", "invalid_parameters"),
        ("GET", "/api/recordings", "since=notatime", "invalid_time"),
        ("GET", "/api/recordings", "until=yesterday", "invalid_time"),
    ):
        answer = httpx.request(method, f"{url}{path}?{query}", timeout=10)
        assert answer.status_code == 400, (path, query, answer.text)
        assert answer.json()["error"] == code
        documented = doc["paths"][path][method.lower()]["responses"]
        assert f"`{code}`" in documented["400"]["description"]
        assert "422" not in documented


JPEG = make_jpeg(160, 120)


def test_the_server_answers_what_the_document_says(start_server):
    """Each documented status that a request can provoke here, provoked for real."""
    server = start_server({
        "server": {"max_frame_size_mb": 0.05},
        "streams": {"max_concurrent": 2, "timeout_seconds": 3600},
        # cam's segment stays open: deleting it is refused with 409.
        "recording": {"segment_seconds": 3600, "idle_close_seconds": 3600},
    })
    url = server.url
    doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert publish(url, "cam", JPEG).status_code == 200

    def recording() -> str | None:
        listing = httpx.get(f"{url}/api/recordings", timeout=10).json()
        return listing["recordings"][0]["file"] if listing["count"] else None

    file = wait_for(recording, what="a recording of cam")
    video = f"/api/recordings/cam/{file}"
    big = make_jpeg(1280, 720, quality=98)
    raw = {"Content-Type": "image/jpeg"}
    cases = [
        ("POST", "/publish/{name}", "/publish/cam", {"content": JPEG, "headers": raw}, 200),
        ("PUT", "/publish/{name}", "/publish/cam", {"content": JPEG, "headers": raw}, 200),
        ("POST", "/publish/{name}", "/publish/bad%20name", {"content": JPEG, "headers": raw}, 400),
        ("POST", "/publish/{name}", "/publish/cam", {"content": b"x", "headers": raw}, 400),
        ("POST", "/publish/{name}", "/publish/cam", {"content": big, "headers": raw}, 413),
        ("POST", "/publish/{name}", "/publish/cam",
         {"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415),
        ("POST", "/publish/{name}", "/publish/other", {"content": JPEG, "headers": raw}, 200),
        ("POST", "/publish/{name}", "/publish/third", {"content": JPEG, "headers": raw}, 503),
        ("GET", "/ws/publish/{name}", "/ws/publish/cam", {}, 400),
        ("GET", "/ws/view", "/ws/view", {}, 400),
        ("HEAD", "/stream/{name}", "/stream/cam", {}, 200),
        ("HEAD", "/stream/{name}", "/stream/nope", {}, 404),
        ("GET", "/stream/{name}", "/stream/bad%20name", {}, 400),
        ("GET", "/snapshot/{name}", "/snapshot/cam", {}, 200),
        ("GET", "/snapshot/{name}", "/snapshot/nope", {}, 404),
        ("GET", "/api/streams/{name}/stats", "/api/streams/nope/stats", {}, 404),
        ("GET", "/api/recordings/{stream}/{file}", video, {"headers": {"Range": "bytes=0-9"}}, 206),
        ("GET", "/api/recordings/{stream}/{file}", video,
         {"headers": {"Range": "bytes=10000000000-"}}, 416),
        ("HEAD", "/api/recordings/{stream}/{file}", video, {}, 200),
        ("GET", "/api/recordings/{stream}/{file}", "/api/recordings/cam/cam_20200101_000000.mp4",
         {}, 404),
        ("DELETE", "/api/recordings/{stream}/{file}", video, {}, 409),
        ("DELETE", "/api/recordings/{stream}/{file}", "/api/recordings/cam/nope.mp4", {}, 404),
        ("POST", "/api/clips", "/api/clips", {"json": {"stream": "cam", "start": 0, "end": 1}},
         404),
        ("POST", "/api/clips", "/api/clips", {"json": {"stream": "cam", "start": 1, "end": 0}},
         400),
        ("GET", "/api/clips/{clip_id}", "/api/clips/" + "0" * 32, {}, 404),
        ("GET", "/api/clips/{clip_id}.mp4", "/api/clips/" + "0" * 32 + ".mp4", {}, 404),
        ("GET", "/metrics", "/metrics", {}, 200),
        ("POST", "/api/cleanup/run", "/api/cleanup/run?dry_run=true", {}, 200),
    ]
    for method, template, path, kwargs, status in cases:
        answer = httpx.request(method, url + path, timeout=10, **kwargs)
        what = f"{method} {path}: {answer.status_code} {answer.text[:200]}"
        assert answer.status_code == status, what
        documented = doc["paths"][template][method.lower()]["responses"]
        assert str(status) in documented, what
        media = answer.headers.get("content-type", "").split(";")[0]
        if method != "HEAD" and status >= 400:
            assert media in documented[str(status)]["content"], what
            if media == "application/json":
                assert set(answer.json()) == {"status", "error", "message"}, what
    # A path answers a method it does not list with 405 and Allow (the document says so).
    refused = httpx.delete(f"{url}/publish/cam", timeout=10)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST, PUT"
    assert "`405 method_not_allowed`" in doc["info"]["description"]
