"""The ASGI application: live routes (publish, view, snapshot) and the JSON API."""

from .app import create_app

__all__ = ["create_app"]
