"""Who is signed in to the console: an API key, verified once, remembered by its id.

Only the key's id is kept in the session; the key itself is posted once, hashed and
compared like the API does, and never stored, logged or put in a URL. Every request
reloads the key row, so revoking a key signs its console sessions out at once.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from flask import g, session

from api.auth import active_key
from api.context import services
from shared.errors import Unauthorized
from shared.keys import is_active
from shared.models import ApiKey

_KEY_ID = "key_id"


def signed_in_key() -> ApiKey | None:
    """The session's API key if it is still active, else ``None`` (cached per request)."""
    if "console_key" not in g:
        g.console_key = _load(session.get(_KEY_ID))
    key: ApiKey | None = g.console_key
    return key


def current_key() -> ApiKey:
    """The signed-in key; :class:`Unauthorized` (401) when there is none. Pages and
    endpoints check sign-in before their views run, so inside a view this always has one."""
    key = signed_in_key()
    if key is None:
        raise Unauthorized("sign in to the console first")
    return key


def sign_in(raw_key: str) -> ApiKey | None:
    """Verify ``raw_key``; on success start a fresh session for it (a new CSRF token too,
    so a token planted before sign-in is useless) and return the row, else ``None``."""
    row = active_key(services(), raw_key.strip())
    if row is None:
        return None
    session.clear()
    session.permanent = True
    session[_KEY_ID] = str(row.id)
    session["csrf"] = secrets.token_urlsafe(32)
    g.console_key = row
    return row


def sign_out() -> None:
    """Forget the session entirely (key id and CSRF token)."""
    session.clear()
    g.console_key = None


def _load(raw_id: object) -> ApiKey | None:
    if not isinstance(raw_id, str):
        return None
    try:
        key_id = uuid.UUID(raw_id)
    except ValueError:
        return None
    with services().sessions() as db:
        row = db.get(ApiKey, key_id)
    if row is None or not is_active(row, datetime.now(UTC)):
        return None
    return row
