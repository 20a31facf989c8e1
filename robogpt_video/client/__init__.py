"""The client: publish frames to a robogpt-video server (imports nothing from the server)."""

from .errors import (
    ConfigurationError,
    EncodeError,
    NotRunning,
    PublishConnectionError,
    PublisherError,
    ServerError,
    SourceError,
)


def __getattr__(name: str):
    # Lazy, so that `robogpt-video serve` can build its parser without requests installed.
    if name == "StreamPublisher":
        from .publisher import StreamPublisher

        return StreamPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "EncodeError",
    "NotRunning",
    "PublishConnectionError",
    "PublisherError",
    "ServerError",
    "SourceError",
    "StreamPublisher",
]
