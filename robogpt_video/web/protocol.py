"""aiohttp's connection handler, answering requests it cannot parse in the JSON shape.

A request whose head or body aiohttp cannot parse (a bad ``Content-Length``, broken
chunking, a NUL in the path, an over-long header line) never reaches the application or
its middlewares: ``RequestHandler.handle_error`` answers it directly, as text. This
subclass of the public ``web.RequestHandler`` overrides that public method, so such a
request gets the one error shape ``{"status": "error", "error": …, "message": …}`` too,
and so does a handler's unexpected exception (500).

A malformed request's log line names the client and the kind of error only:
aiohttp's exception text can quote the raw request, which may hold a ``?token=``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web

from .errors import json_error

log = logging.getLogger(__name__)

#: What each status aiohttp answers by itself says, in the JSON body (a request it
#: cannot parse, an over-long header line included, gets 400; a handler that raised,
#: 500; one that timed out, 504).
_MESSAGES = {
    400: ("malformed_request", "the request is not valid HTTP/1.1 ({kind})"),
    504: ("timeout", "the server did not finish the answer in time ({kind})"),
}
_SERVER_ERROR = ("internal_error", "the server failed to answer ({kind})")


class JsonErrorRequestHandler(web.RequestHandler):
    """``web.RequestHandler`` whose error answers are JSON."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        if status >= 500:
            # A handler failed (500) or timed out (504): the parent logs it with its
            # traceback and raises if part of a response is sent already (then the
            # connection can only be closed); its text answer is replaced.
            super().handle_error(request, status, exc, message)
        else:
            # The request could not be parsed, so no handler ran and nothing is sent.
            log.info("malformed request from %s answered %d: %s", request.remote, status, kind)
        code, text = _MESSAGES.get(status, _SERVER_ERROR)
        response = json_error(status, code, text.format(kind=kind))
        response.force_close()
        return response


def handler_factory(server: web.Server, **kwargs) -> Callable[[], asyncio.Protocol]:
    """A protocol factory making :class:`JsonErrorRequestHandler` for ``server`` (the
    public ``runner.server``) with the handler arguments ``kwargs`` (those given to
    ``web.AppRunner``)."""
    loop = asyncio.get_running_loop()
    return lambda: JsonErrorRequestHandler(server, loop=loop, **kwargs)
