"""Every error leaves the server as ``{"status": "error", "error": code, "message": text}``."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ..errors import ApiError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters",
}


def error_response(status_code: int, code: str, message: str, headers=None) -> JSONResponse:
    """The one JSON error shape."""
    body = {"status": "error", "error": code, "message": message}
    return JSONResponse(body, status_code=status_code, headers=headers)


def json_error(status_code: int, code: str, message: str, headers=None) -> web.Response:
    """The one JSON error shape, as an aiohttp response (the hot routes)."""
    body = json.dumps({"status": "error", "error": code, "message": message})
    return web.Response(
        body=body.encode(), status=status_code, content_type="application/json", headers=headers
    )


def _headers(exc: ApiError, headers=None) -> dict | None:
    if exc.retry_after is None:
        return headers
    return {**(headers or {}), "Retry-After": str(exc.retry_after)}


def api_error(exc: ApiError, headers=None) -> web.Response:
    """An :class:`ApiError` as an aiohttp response."""
    return json_error(exc.status_code, exc.code, exc.message, _headers(exc, headers))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, headers=_headers(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A parameter that does not parse (``?dry_run=maybe``): 400, like every other bad
    input, not FastAPI's 422."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return error_response(400, "invalid_parameters", "; ".join(parts) or "invalid parameters")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, (ConnectionError, ClientDisconnect)):  # the client left mid-answer
        log.debug("client left during %s %s: %r", request.method, request.url.path, exc)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    RequestValidationError: _validation_error,
    Exception: _unexpected,
}
