"""The brief's ``client`` package: ``client.publisher`` and ``client/examples``."""

from .publisher import *  # noqa: F401,F403
from .publisher import __all__  # noqa: F401
