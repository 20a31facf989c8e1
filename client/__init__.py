"""The brief's import path: ``from client.publisher import StreamPublisher``."""

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
