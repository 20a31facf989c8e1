"""The dashboard: ``GET /`` is one static page; its script and styles are served under ``/ui/``.

No build step and no CDN: the files ship inside the package (docs/dashboard.md).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC = "static"


def install(app: FastAPI) -> None:
    """Add ``GET /`` (the dashboard page) and ``/ui/`` (its script and styles)."""
    # Read once while the app is built, so serving the page never touches the disk.
    page = (resources.files(__package__) / STATIC / "index.html").read_bytes()

    async def dashboard(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.add_route("/", dashboard, methods=["GET"], include_in_schema=False)
    app.mount("/ui", StaticFiles(packages=[(__package__, STATIC)]), name="ui")
