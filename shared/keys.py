"""API keys: generated once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey, Tenant
from shared.webhooks import new_secret

KEY_PREFIX = "sl_"


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key: what the database stores and looks up.

    A lookup by hash leaks nothing useful through timing: an attacker cannot steer the
    hash of their guess towards a stored one.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    session: Session,
    name: str,
    callback_url: str | None = None,
    *,
    tenant: str | None = None,
    expires_in_s: float | None = None,
    rate_limit: str | None = None,
    max_queued: int | None = None,
) -> tuple[ApiKey, str]:
    """Create and add an API key named ``name`` with an optional default ``callback_url``,
    lifetime, rate limit ``"N/S"`` and queue cap; returns the row and the plaintext key,
    which is never stored and cannot be recovered later.

    The key joins the existing tenant named ``tenant`` (``LookupError`` if there is none),
    or, without one, a new tenant named ``name`` with a fresh webhook secret
    (``LookupError`` if that name is taken: sharing a tenant is never implicit).
    """
    if tenant is None:
        if _tenant_named(session, name) is not None:
            raise LookupError(
                f"a tenant named {name!r} exists; pass --tenant {name} to add a key to it, "
                "or choose another name"
            )
        owner = Tenant(name=name, created_at=datetime.now(UTC), webhook_secret=new_secret())
        session.add(owner)
    else:
        found = _tenant_named(session, tenant)
        if found is None:
            raise LookupError(f"no tenant named {tenant!r}")
        owner = found
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant=owner,
        name=name,
        prefix=key[:10],
        key_sha256=hash_key(key),
        created_at=datetime.now(UTC),
        callback_url=callback_url,
        expires_at=(
            datetime.now(UTC) + timedelta(seconds=expires_in_s)
            if expires_in_s is not None
            else None
        ),
        rate_limit=rate_limit,
        max_queued=max_queued,
    )
    session.add(row)
    session.flush()
    return row, key


def _tenant_named(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def find_key(session: Session, name_or_id: str) -> ApiKey:
    """The key whose id or name is ``name_or_id``; ``LookupError`` if none or ambiguous."""
    query = select(ApiKey).where(ApiKey.name == name_or_id)
    with contextlib.suppress(ValueError):
        query = select(ApiKey).where(ApiKey.id == uuid.UUID(name_or_id))
    rows = session.scalars(query).all()
    if len(rows) != 1:
        raise LookupError(f"{len(rows)} API keys match {name_or_id!r}; give exactly one id")
    return rows[0]


def rotate_webhook_secret(session: Session, row: Tenant, grace_s: int) -> str:
    """Give tenant ``row`` a new webhook secret and return it. The old one keeps signing
    (both signatures are sent) for ``grace_s`` seconds, so consumers can switch without a
    gap."""
    row.previous_webhook_secret = row.webhook_secret
    row.previous_secret_expires_at = datetime.now(UTC) + timedelta(seconds=grace_s)
    row.webhook_secret = new_secret()
    session.flush()
    return row.webhook_secret


def find_key_by_hash(session: Session, digest: str) -> ApiKey | None:
    """The key row whose SHA-256 is ``digest`` (revoked and expired ones too), with its
    tenant loaded; ``None`` if there is none."""
    return session.scalars(select(ApiKey).where(ApiKey.key_sha256 == digest)).one_or_none()


def is_active(row: ApiKey, now: datetime) -> bool:
    """Whether ``row`` is neither revoked nor expired at ``now``."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def revoke_key(session: Session, row: ApiKey) -> None:
    """Revoke ``row`` now: every request with it answers 401 from then on."""
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    session.flush()


def list_keys(session: Session) -> list[dict[str, str | None]]:
    """Every key by name, prefix and tenant with its dates; never the hash, key or
    secret."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [
        {
            "id": str(row.id),
            "name": row.name,
            "prefix": row.prefix,
            "tenant": row.tenant.name,
            "created_at": row.created_at.isoformat(),
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
        for row in rows
    ]
