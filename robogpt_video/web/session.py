"""``POST /api/session``: trade credentials for a token a page can put in URLs.

A browser cannot set headers on ``<img src>``; the dashboard signs in once with a name
and password (or a token), then uses the returned token as ``?token=`` for live tiles
and as ``Authorization: Bearer`` for the API (docs/security.md).
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request
from pydantic import BaseModel

from .access import current_principal
from .schemas import ErrorBody

router = APIRouter()


class Session(BaseModel):
    user: str
    token: str
    expires: str  # ISO-8601, UTC
    permissions: list[dict[str, str]]


@router.post(
    "/api/session",
    response_model=Session,
    responses={401: {"model": ErrorBody, "description": "No or wrong credentials"}},
    tags=["access"],
)
async def create_session(request: Request) -> dict:
    """A token for the credentials this request carried (``Basic`` or ``Bearer``),
    valid for ``auth.session_hours``, with the permissions it grants."""
    principal = current_principal.get()
    authenticator = request.app.state.authenticator
    token, expires = authenticator.issue_session(principal)
    return {
        "user": principal.name,
        "token": token,
        "expires": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
        "permissions": [{"action": a, "streams": s} for a, s in principal.grants],
    }
