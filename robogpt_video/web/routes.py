"""What every hot route shares: CORS headers, preflights, 405s in the JSON shape, and
answers that end the connection."""

from __future__ import annotations

from aiohttp import web

from .errors import json_error
from .state import ACCESS, RUNTIME


def cors_headers(request: web.Request) -> dict:
    """CORS headers for a browser's request to a hot route (``server.cors_enabled``,
    ``server.cors_origins``). Never ``Access-Control-Allow-Credentials``."""
    origin = request.headers.get("Origin")
    if origin is None or not request.app[RUNTIME].settings.server.cors_enabled:
        return {}
    origins = request.app[ACCESS].origins
    if origins.any:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Timestamp"}
    if origins.allowed(origin):
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": "X-Timestamp"}
    return {}


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection: the rest of the body is not read, so
    a publisher fails at once instead of streaming into a server that discards it (or,
    after a body timeout, the connection is not held for a body that may never come)."""
    response.force_close()
    response.headers.update(cors_headers(request))  # they cannot be added once it is sent
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after what is queued (the answer) has been sent
    return response


PREFLIGHT_METHODS = "GET, POST, PUT, DELETE, OPTIONS"


async def _other_method(request: web.Request, allowed: str) -> web.Response:
    """Any other method on a hot route: a CORS preflight's answer, else 405 in JSON."""
    cors = cors_headers(request)
    if request.method == "OPTIONS" and cors and "Access-Control-Request-Method" in request.headers:
        cors.pop("Access-Control-Expose-Headers")
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            cors["Access-Control-Allow-Headers"] = requested
        cors.update({"Access-Control-Allow-Methods": PREFLIGHT_METHODS,
                     "Access-Control-Max-Age": "600", "Vary": "Origin"})
        return web.Response(text="OK", headers=cors)
    return json_error(
        405, "method_not_allowed", f"{request.method} is not allowed on {request.path} (use {allowed})",
        headers={"Allow": allowed, **cors},
    )


def add_resource(app: web.Application, path: str, handlers: dict) -> None:
    """A path with a handler per method; any other method gets a 405 (or a preflight)."""
    allowed = ", ".join(handlers)

    async def other_method(request: web.Request) -> web.Response:
        return await _other_method(request, allowed)

    resource = app.router.add_resource(path)
    for method, handler in handlers.items():
        resource.add_route(method, handler)
    resource.add_route("*", other_method)
