"""The API's documentation, offline: ``/docs``.

``/docs`` (Swagger UI) loads its script, styles and icon from ``/docs/assets/``: the
files the ``fastapi-offline`` package ships, served from the installed package, so the
page works on a network without internet. No CDN. There is no ``/redoc``: the ReDoc
script fastapi-offline ships loads its logo from Redocly's CDN, and no option stops it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

#: Where the page's script, styles and icon are served.
ASSETS = "/docs/assets"
#: fastapi-offline's package folder holding swagger-ui-bundle.js, swagger-ui.css and
#: favicon.png (and redoc.standalone.js, not used).
ASSET_PACKAGE = ("fastapi_offline", "static")


def install(api_app: FastAPI) -> None:
    """``/docs`` with its files under ``/docs/assets/``. The app is made with
    ``docs_url=None`` and ``redoc_url=None``, so FastAPI adds no page of its own."""
    api_app.mount(ASSETS, StaticFiles(packages=[ASSET_PACKAGE]), name="docs-assets")
    openapi_url, title = api_app.openapi_url, api_app.title

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    api_app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
