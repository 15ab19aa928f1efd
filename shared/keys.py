"""API keys: generated once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey

KEY_PREFIX = "sl_"


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key: what the database stores and looks up.

    A lookup by hash leaks nothing useful through timing: an attacker cannot steer the
    hash of their guess towards a stored one.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Create and add an API key named ``name``; returns the row and the plaintext key,
    which is never stored and cannot be recovered later."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=key[:10], key_sha256=hash_key(key), created_at=datetime.now(UTC))
    session.add(row)
    session.flush()
    return row, key


def find_active_key(session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row matching ``key``, or ``None``."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_sha256 == hash_key(key))).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row
