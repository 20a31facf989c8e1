"""The web application: live routes (publish, view, snapshot, ingest) and the JSON API."""

from .app import create_app

__all__ = ["create_app"]
