"""The brief's generic publisher (implemented in :mod:`robogpt_video.client`)."""

from robogpt_video.client import (
    ConfigurationError,
    EncodeError,
    NotRunning,
    PublishConnectionError,
    PublisherError,
    ServerError,
    SourceError,
    StreamPublisher,
)

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
