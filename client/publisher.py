"""The brief's import path: ``from client.publisher import StreamPublisher``.

A re-export of :mod:`robogpt_video.client`, which holds the implementation.
"""

from robogpt_video.client import *  # noqa: F401,F403
from robogpt_video.client import __all__  # noqa: F401
