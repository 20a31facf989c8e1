"""The API's documentation, complete and offline: ``/docs`` and ``/openapi.json``.

- ``/docs`` (Swagger UI) loads its script, styles and icon from ``/docs/assets/``: the
  files the ``fastapi-offline`` package ships, served from the installed package, so the
  page works on a network without internet. No CDN. There is no ``/redoc``: the ReDoc
  script fastapi-offline ships loads its logo from Redocly's CDN, and no option stops it.
- FastAPI documents the routes it serves itself; :func:`document` adds the ones it does
  not know: the hot routes aiohttp serves (``live.py``, ``ingest.py``) and ``/metrics``
  (a Starlette route). Every operation then gets the credentials and the refusals of
  its rule in ``access.RULES``, and FastAPI's 422 gives way to the 400
  ``invalid_parameters`` the server really answers (``errors.py``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from ..streams import NAME_RE
from .access import EVERY_STREAM, PUBLIC, SIGNED_IN, STATE_CHANGING, find_rule
from .ingest import (
    WS_INVALID_PAYLOAD,
    WS_MAX_REASON,
    WS_MESSAGE_TOO_BIG,
    WS_POLICY_VIOLATION,
    WS_TRY_AGAIN_LATER,
    WS_UNSUPPORTED_DATA,
)
from .mjpeg import CONTENT_TYPE as MJPEG
from .schemas import ErrorBody, PublishedFrame, PublishedFrames

#: Where the page's script, styles and icon are served.
ASSETS = "/docs/assets"
#: fastapi-offline's package folder holding swagger-ui-bundle.js, swagger-ui.css and
#: favicon.png (and redoc.standalone.js, not used).
ASSET_PACKAGE = ("fastapi_offline", "static")

NOTES = """
Every error is JSON, `{"status": "error", "error": "<code>", "message": "<text>"}`
(`ErrorBody`), except the plain-text `Range` errors of recording downloads. A
parameter that does not parse is `400 invalid_parameters`. A path answers a method it
does not list with `405 method_not_allowed` and an `Allow` header, and an unknown path
is `404 not_found` (with access control on, to a signed-in user: others get 401).

Access control is off by default: then no operation needs credentials, and any sent
are ignored. With users (`auth.users`) or JWTs (`auth.jwt`) configured, each operation
takes HTTP Basic, a Bearer token or `?token=` (where no header can be set), and lists
the 401, 403 and 429 answers it can give.
"""

TAGS = [
    {"name": "publish", "description": "Frames in: one per request, a long-lived multipart "
     "body, or a WebSocket"},
    {"name": "live", "description": "Frames out: live MJPEG and the latest JPEG"},
    {"name": "streams", "description": "Live streams and their statistics"},
    {"name": "recordings", "description": "Recordings on disk: list, download, replay, delete"},
    {"name": "clips", "description": "H.264 MP4 clips of a time range of recordings, "
     "made on request"},
    {"name": "cleanup", "description": "The cleanup sweeps, run now"},
    {"name": "access", "description": "Sessions for pages (with access control on)"},
    {"name": "server", "description": "Health and Prometheus metrics"},
]

SECURITY_SCHEMES = {
    "basic": {"type": "http", "scheme": "basic",
              "description": "A user's name and password, or its name and a token as the password"},
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "A user's token, a session token (`POST /api/session`) or a JWT "
               "(`auth.jwt`)"},
    "token": {"type": "apiKey", "in": "query", "name": "token",
              "description": "The same tokens as Bearer, for clients that cannot set a header "
              "(`<img src>`, VLC, Home Assistant)"},
}
#: Any one of them (a list of security requirements is a choice).
CREDENTIALS = [{name: []} for name in SECURITY_SCHEMES]

_REF = "#/components/schemas/{model}"
_ERROR = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_HEADER = {"schema": {"type": "string"}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again",
                                "schema": {"type": "integer"}}}
_METHODS = ("get", "head", "post", "put", "delete", "options", "patch", "trace")


def install(api_app: FastAPI) -> None:
    """``/docs`` with its files under ``/docs/assets/``, and the complete document at
    ``/openapi.json``. The app is made with ``docs_url=None`` and ``redoc_url=None``, so
    FastAPI adds no page of its own."""
    api_app.mount(ASSETS, StaticFiles(packages=[ASSET_PACKAGE]), name="docs-assets")
    openapi_url, title = api_app.openapi_url, api_app.title

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    api_app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)

    def openapi() -> dict[str, Any]:
        # FastAPI's way to extend the document: build it once, keep it in openapi_schema.
        if api_app.openapi_schema is None:
            api_app.openapi_schema = document(api_app)
        return api_app.openapi_schema

    api_app.openapi = openapi


def document(api_app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of every route the server answers (not its pages)."""
    doc = get_openapi(
        title=api_app.title,
        version=api_app.version,
        openapi_version=api_app.openapi_version,
        description=f"{api_app.description}\n{NOTES}",
        routes=api_app.routes,
        tags=TAGS,
    )
    doc["paths"] = {**_hot_paths(), **doc.get("paths", {}), "/metrics": _metrics_path()}
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorBody, PublishedFrame, PublishedFrames):
        schemas.setdefault(model.__name__, model.model_json_schema(ref_template=_REF))
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                _finish(item[method], method.upper(), path)
        # GET before HEAD before the rest, whatever order the routes were declared in.
        doc["paths"][path] = {**{m: item[m] for m in _METHODS if m in item},
                              **{k: v for k, v in item.items() if k not in _METHODS}}
    # FastAPI's models of its 422 answer, which the server never gives.
    text = repr(doc["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if _REF.format(model=name) not in text and name in schemas:
            del schemas[name]
    return doc


# --- what every operation shares: credentials, refusals, 400 for bad parameters ---------


def _respond(
    responses: dict, status: int, description: str, head: bool, headers: dict | None = None
) -> None:
    """Add an error answer, or add ``description`` to the one already there."""
    answer = responses.get(str(status))
    if answer is None:
        answer = responses[str(status)] = {"description": description}
    else:
        answer["description"] = f"{answer['description']}; {description}"
    # New dicts, not updates: parts of answers may be this module's constants.
    if not head:
        answer["content"] = {**answer.get("content", {}), **_ERROR}
    if headers:
        answer["headers"] = {**answer.get("headers", {}), **headers}


def _only_text(schema: dict) -> bool:
    """Whether a parameter of this schema takes any text (so it cannot fail to parse)."""
    options = schema.get("anyOf", [schema])
    return all(option.get("type") in ("string", "null") for option in options)


def _finish(operation: dict, method: str, path: str) -> None:
    responses = operation["responses"]
    head = method == "HEAD"
    if responses.pop("422", None) is not None:  # FastAPI's default answer: see errors.py
        typed = [p["name"] for p in operation.get("parameters", ())
                 if not _only_text(p.get("schema", {}))]
        if typed:
            names = ", ".join(f"`{name}`" for name in typed)
            _respond(responses, 400, f"`invalid_parameters`: {names} does not parse", head)
    rule, _ = find_rule(method, path)
    action = rule.action if rule is not None else SIGNED_IN  # no rule: closed (access.py)
    operation["security"] = [{}, *CREDENTIALS] if action == PUBLIC else CREDENTIALS
    challenge = {"WWW-Authenticate": {
        "description": 'Basic realm="robogpt-video", Bearer realm="robogpt-video"', **_HEADER}}
    if action == PUBLIC:
        _respond(responses, 401, "`unauthorized`, with access control on: wrong credentials "
                 "(none are needed here)", head, challenge)
    else:
        _respond(responses, 401, "`unauthorized`, with access control on: no credentials, "
                 "or wrong ones", head, challenge)
    if action not in (PUBLIC, SIGNED_IN):
        if rule.stream == EVERY_STREAM:
            where = "every stream (`streams: \"*\"`)"
        elif rule.stream is not None:
            where = "this stream"
        else:
            where = ("some stream (the answer lists only those the user may see; for a "
                     "clip, on the clip's stream)")
        _respond(responses, 403, f"`forbidden`, with access control on: the user has no "
                 f"`{action}` permission on {where}", head)
    if action in STATE_CHANGING:
        _respond(responses, 403, f"`origin_not_allowed`: sent by a page whose `Origin` may not "
                 f"{action} here (`server.cors_origins`)", head)
    _respond(responses, 429, "`too_many_failures`, with access control on: too many failed "
             "sign-ins from this address (`auth.max_failures_per_minute`)", head, _RETRY_AFTER)
    if action == "publish":
        _respond(responses, 429, "`too_many_refused_publishes`, with access control on: too "
                 "many refused publishes from this address "
                 "(`auth.max_refused_publishes_per_minute`)", head, _RETRY_AFTER)
    _respond(responses, 503, "`too_many_connections`: over `server.max_connections` or "
             "`server.max_connections_per_address`; `jwks_unavailable`: the keys to check a "
             "JWT cannot be fetched (`auth.jwt.jwks_url`)", head, _RETRY_AFTER)
    operation["responses"] = dict(sorted(responses.items()))


# --- the routes FastAPI does not know -----------------------------------------------------

_NAME = {
    "name": "name", "in": "path", "required": True,
    "description": "The stream's name: 1-64 letters, digits, `_` or `-`",
    "schema": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"},
}
_NO_CACHE = {"Cache-Control": _HEADER}
_INVALID_NAME = "`invalid_stream_name`"


def _error(description: str, head: bool = False, headers: dict | None = None) -> dict:
    answer: dict[str, Any] = {"description": description}
    if not head:
        answer["content"] = dict(_ERROR)
    if headers:
        answer["headers"] = dict(headers)
    return answer


def _publish(method: str) -> dict:
    return {
        "tags": ["publish"],
        "summary": "Publish one JPEG frame, or every part of a long-lived multipart body",
        "description": (
            "The stream is created by its first frame.\n\n"
            "- `multipart/form-data` with the JPEG in the field `frame` (`curl -F frame=@a.jpg`)\n"
            "- a raw JPEG body: `image/jpeg` (or `image/jpg`, `image/pjpeg`, "
            "`application/octet-stream`, or no `Content-Type`)\n"
            "- `multipart/x-mixed-replace` (or `multipart/mixed`, or no `Content-Type` and a "
            "body starting with `--`): a long-lived, usually chunked body whose every part "
            "is a frame, published as it arrives (`ffmpeg -f mpjpeg -method POST URL`). "
            "The answer comes when the body ends; a bad part ends the request with its error, "
            "the connection is closed, and the frames before it stay published.\n\n"
            "Every frame is checked as a JPEG and against `server.max_frame_size_mb`."
        ),
        "operationId": f"publish_{method}",
        "parameters": [_NAME],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["frame"],
                               "properties": {"frame": {"type": "string", "format": "binary"}}},
                    "encoding": {"frame": {"contentType": "image/jpeg"}},
                },
                "image/jpeg": _BINARY,
                "application/octet-stream": _BINARY,
                "multipart/x-mixed-replace": _BINARY,
            },
        },
        "responses": {
            "200": {
                "description": "Published: one frame (`PublishedFrame`), or every part of a "
                "multipart body that ended cleanly (`PublishedFrames`)",
                "content": {"application/json": {"schema": {"anyOf": [
                    {"$ref": _REF.format(model="PublishedFrame")},
                    {"$ref": _REF.format(model="PublishedFrames")},
                ]}}},
            },
            "400": _error(
                f"{_INVALID_NAME}; `empty_frame`, `not_jpeg`, `truncated_jpeg`, `corrupt_jpeg`: "
                "not a whole JPEG; `missing_frame_field`, `bad_multipart`: a form without "
                "a usable `frame`; `truncated_upload`: the body ended early"),
            "413": _error("`frame_too_large`: over `server.max_frame_size_mb`, refused from "
                          "`Content-Length` before the body is read"),
            "415": _error("`unsupported_media_type`: a `Content-Type` that is none of the above"),
            "503": _error("`stream_limit_reached`: `streams.max_concurrent` streams are live, "
                          "with `Retry-After`; `shutting_down`: the server is stopping",
                          headers=_RETRY_AFTER),
        },
    }


_CLOSE_CODES = f"""
| Close code | When (reason `<error>: <message>`, at most {WS_MAX_REASON} bytes) |
|---|---|
| {int(WSCloseCode.GOING_AWAY)} | the server is shutting down (reason `server shutdown`, or `shutting_down: …` for a connection opened while it stops) |
| {WS_UNSUPPORTED_DATA} | `unsupported_data`: a text message (send frames as binary messages) |
| {WS_INVALID_PAYLOAD} | `empty_frame`, `not_jpeg`, `truncated_jpeg`, `corrupt_jpeg`: not a whole \
JPEG |
| {WS_POLICY_VIOLATION} | `invalid_stream_name` |
| {WS_MESSAGE_TOO_BIG} | `frame_too_large`: a message over `server.max_frame_size_mb` (over it by \
more than 4 MB: aiohttp closes with its own reason) |
| {WS_TRY_AGAIN_LATER} | `stream_limit_reached`: `streams.max_concurrent` streams are live |
"""

def _websocket() -> dict:
    return {
        "tags": ["publish"],
        "summary": "Publish frames over a WebSocket: each binary message is one JPEG",
        "description": (
            "Connect with a WebSocket client (`ws://`, or `wss://` with TLS). Each frame is "
            "checked as a single POST is; the stream is created by the first one. A refused "
            "frame closes the connection with a close code and reason, and the frames before "
            "it stay published.\n" + _CLOSE_CODES
        ),
        "operationId": "publish_websocket",
        "parameters": [_NAME],
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open; it ends with one "
                    "of the close codes above, or when the client closes it"},
            "400": _error("`websocket_required`: not a WebSocket handshake "
                          "(no `Upgrade: websocket`)"),
        },
    }


def _view_socket() -> dict:
    return {
        "tags": ["live"],
        "summary": "Watch many streams over one WebSocket (the dashboard's)",
        "description": (
            "Send a text message `{\"type\": \"subscribe\", \"streams\": [{\"name\": \"cam1\", "
            "\"fps\": 15, \"width\": 320, \"quality\": 70}]}` (`fps`, `width`, `quality` as "
            "on `/stream/{name}`, all optional); each such message replaces the set. Each "
            "frame comes as one binary message: byte 0 the header version (1), byte 1 the "
            "length N of the stream's name, N bytes of name, then big-endian float64 "
            "sequence, float64 arrival time (Unix seconds), float32 age when sent "
            "(seconds), uint16 width, uint16 height, and the JPEG. A slow link skips to "
            "each stream's newest frame. Text messages from the server are JSON with a "
            "`type`: `subscribed` (the streams now served), `ended` (no such stream, or "
            "it ended: subscribe again to retry), `forbidden` (no `view` permission on "
            "that stream), `error` (a bad message, e.g. `invalid_message`, or "
            "`viewer_limit_reached`); the connection stays open after each. With access "
            "control on, a browser passes its token as `?token=`."
        ),
        "operationId": "view_socket",
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open"},
            "400": _error("`websocket_required`: not a WebSocket handshake "
                          "(no `Upgrade: websocket`)"),
        },
    }


def _view(head: bool) -> dict:
    ok: dict[str, Any] = {
        "description": "Live MJPEG until the stream ends (deleted or timed out) or the server "
        "stops: each part has `Content-Type: image/jpeg`, `Content-Length` and `X-Timestamp` "
        "(arrival, Unix seconds); a quiet stream re-sends its last frame every second"
        + ("; a HEAD gets the headers only" if head else ""),
        "headers": _NO_CACHE,
    }
    if not head:
        ok["content"] = {MJPEG: _BINARY}
    return {
        "tags": ["live"],
        "summary": "Watch a stream live as MJPEG",
        "description": "Plays in a browser's `<img>`, VLC, ffmpeg, OpenCV and Home Assistant's "
        "MJPEG camera. A slow viewer skips frames; one that accepts nothing for "
        "`streams.viewer_stall_seconds` is closed.",
        "operationId": "view_stream_head" if head else "view_stream",
        "parameters": [_NAME],
        "responses": {
            "200": ok,
            "400": _error(_INVALID_NAME, head),
            "404": _error("`stream_not_found`", head),
            "503": _error("`viewer_limit_reached`: the stream has `streams.max_viewers` viewers",
                          head, _RETRY_AFTER),
        },
    }


def _snapshot(head: bool) -> dict:
    ok: dict[str, Any] = {
        "description": "The latest frame" + (" (headers only)" if head else ""),
        "headers": {"X-Timestamp": {"description": "When the frame arrived (Unix seconds)",
                                    **_HEADER}, **_NO_CACHE},
    }
    if not head:
        ok["content"] = {"image/jpeg": _BINARY}
    return {
        "tags": ["live"],
        "summary": "The latest JPEG of a stream, at once",
        "operationId": "snapshot_head" if head else "snapshot",
        "parameters": [_NAME],
        "responses": {
            "200": ok,
            "400": _error(_INVALID_NAME, head),
            "404": _error("`stream_not_found`; `no_frame`: the stream has no frame yet", head),
        },
    }


def _hot_paths() -> dict:
    return {
        "/publish/{name}": {"post": _publish("post"), "put": _publish("put")},
        "/ws/publish/{name}": {"get": _websocket()},
        "/ws/view": {"get": _view_socket()},
        "/stream/{name}": {"get": _view(False), "head": _view(True)},
        "/snapshot/{name}": {"get": _snapshot(False), "head": _snapshot(True)},
    }


def _metrics_path() -> dict:
    def operation(head: bool) -> dict:
        ok: dict[str, Any] = {"description": "Prometheus text exposition: per-stream frames and "
                              "bytes in and out, drops, viewers, recording, publish latency"}
        if not head:
            ok["content"] = {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}
        return {
            "tags": ["server"],
            "summary": "Prometheus metrics",
            "operationId": "metrics_head" if head else "metrics",
            "responses": {"200": ok},
        }

    return {"get": operation(False), "head": operation(True)}
