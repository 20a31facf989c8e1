"""The brief's generic publisher (implemented in :mod:`robogpt_video.client`)."""

from robogpt_video.client import *  # noqa: F401,F403
from robogpt_video.client import StreamPublisher, __all__  # noqa: F401
