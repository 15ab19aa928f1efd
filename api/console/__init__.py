"""The web console at ``/console``: people sign in with an API key, ask about an image and
watch it run, review their jobs, and see the service's status.

Server-rendered Jinja templates and one small self-hosted script; no front-end build.
Blueprints: ``console`` (session cookie, CSRF check, security headers, static files)
holding ``console.pages`` (HTML; errors render a friendly page) and ``console.api``
(JSON for the script; errors are problem+json like ``/v1``).
"""

from __future__ import annotations

from flask import Blueprint

from api.console.endpoints import endpoints
from api.console.pages import pages
from api.console.security import (
    CSRF_FIELD,
    check_csrf,
    configure_session_cookie,
    csrf_token,
    secure_headers,
)
from api.console.signin import signed_in_key

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
console.record_once(configure_session_cookie)
console.before_request(check_csrf)
console.after_request(secure_headers)
console.register_blueprint(pages)
console.register_blueprint(endpoints)


@console.app_context_processor
def _template_globals() -> dict[str, object]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD, "signed_in_key": signed_in_key}


__all__ = ["console"]
