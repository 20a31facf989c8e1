"""Typed API errors. The web layer turns each into one JSON shape in one place."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client caused or must know about, with an HTTP status and a code."""

    status_code = 400
    code = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After: worth trying again later

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class InvalidStreamName(ApiError):
    status_code = 400
    code = "invalid_stream_name"


class InvalidFrame(ApiError):
    status_code = 400
    code = "invalid_frame"


class FrameTooLarge(ApiError):
    status_code = 413
    code = "frame_too_large"


class RequestTimeout(ApiError):
    """A body (or a frame of a long-lived upload) sent nothing for
    ``server.body_timeout_seconds``."""

    status_code = 408
    code = "request_timeout"
    timeout = "body"  # the label of robogpt_video_connections_timed_out_total


class IngestIdle(RequestTimeout):
    """A long-lived upload sent no frame for ``streams.timeout_seconds``."""

    timeout = "idle"


class StreamNotFound(ApiError):
    status_code = 404
    code = "stream_not_found"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class StreamLimitReached(ApiError):
    status_code = 503
    code = "stream_limit_reached"
    retry_after = 10  # a slot frees when a stream is deleted or times out


class ViewerLimitReached(ApiError):
    status_code = 503
    code = "viewer_limit_reached"
    retry_after = 10


class Unauthorized(ApiError):
    """No usable credentials: 401 with a challenge."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """Known credentials without the permission asked for: 403."""

    status_code = 403
    code = "forbidden"


class TooManyFailures(ApiError):
    """Too many failed authentications from one client address: 429."""

    status_code = 429
    code = "too_many_failures"
