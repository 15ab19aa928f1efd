"""What protects the console's pages in a browser: CSRF tokens, strict response headers
and the session cookie's flags.

The session (a cookie signed with ``SIGHTLINE_SECRET_KEY``) holds only the signed-in
key's id and the CSRF token, never the API key itself.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

from flask import Response, request, session
from flask.blueprints import BlueprintSetupState

from api.context import Services
from shared.error_codes import ErrorCode
from shared.errors import SightlineError

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Self-hosted scripts and styles only: no inline code, so an injected <script> cannot run.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # blob: previews the picked image before it is uploaded (URL.createObjectURL).
        "img-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SESSION_LIFETIME = timedelta(hours=8)


class CsrfRejected(SightlineError):
    """A state-changing request without the session's CSRF token (forged, or a stale page)."""

    status = 403
    code = ErrorCode.CSRF_FAILED
    title = "Request refused"


def csrf_token() -> str:
    """The session's CSRF token, created on first use (templates put it in every form)."""
    token: str | None = session.get("csrf")
    if token is None:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """``before_request`` hook: every request but GET/HEAD/OPTIONS must carry the session's
    token in the ``X-CSRF-Token`` header (fetch calls) or the ``csrf_token`` form field
    (forms); raises :class:`CsrfRejected` (403) otherwise."""
    if request.method in _SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    expected = session.get("csrf", "")
    if not (sent and expected and hmac.compare_digest(sent, expected)):
        raise CsrfRejected(
            "this request did not come from a current console page; reload the page and retry"
        )


def secure_headers(response: Response) -> Response:
    """``after_request`` hook: no framing (clickjacking), the strict CSP, no MIME sniffing,
    no referrer leaving the site, and no caching of pages that show private data (a
    view that sets its own ``Cache-Control`` keeps it)."""
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def configure_session_cookie(state: BlueprintSetupState) -> None:
    """Run once when the console is registered: the session cookie is HttpOnly (scripts
    cannot read it), SameSite=Lax (not sent on cross-site POSTs), scoped to ``/console``,
    expires after :data:`SESSION_LIFETIME`, and Secure in production (HTTPS only)."""
    svc: Services = state.app.extensions["sightline"]
    state.app.config.update(
        SESSION_COOKIE_NAME="sightline_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=svc.settings.environment == "production",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
