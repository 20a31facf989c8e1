"""Every error the client raises derives from :class:`PublisherError`."""

from __future__ import annotations


class PublisherError(Exception):
    """Root of the client's errors."""


class ConfigurationError(PublisherError, ValueError):
    """A publisher or source was given an unusable argument."""


class NotRunning(PublisherError):
    """A frame was offered to a publisher that is not started (or already stopped)."""


class EncodeError(PublisherError):
    """A frame could not be turned into a JPEG."""


class SourceError(PublisherError):
    """A camera, video file or test pattern could not be opened or read."""


class PublishConnectionError(PublisherError):
    """The server could not be reached, or the connection broke."""


class ServerError(PublisherError):
    """The server refused a frame or a connection, with its JSON error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"server answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (a full server, a server error)."""
        return self.status >= 500 or self.status == 429
