"""Structured logs: one JSON object per line on stderr, for every sightline process.

Each line carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
process's ``role`` (``api``, ``launcher``, ``worker``, ``webhooks``, ``beat``,
``flower``) and ``pid``, the fields bound for the whole process (a worker's ``worker``
and ``device``), the fields bound for the current unit of work with :func:`log_context`
(``batch_id``), and whatever a call passes as ``extra=`` (``job_id``, …).

Secrets and payloads never reach the output, whatever a caller passes: bytes become
``<N bytes>``, API keys (``sl_…``), webhook secrets (``whsec_…``), bearer tokens and
long base64 runs (an image inlined in a message) are replaced by ``[redacted]``, and
every string is cut at :data:`MAX_FIELD_CHARS`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

# Longest string kept in any field (a traceback gets more room); log lines stay bounded
# even when an exception message quotes a whole request.
MAX_FIELD_CHARS = 4096
MAX_TRACEBACK_CHARS = 16_384

_SECRETS = re.compile(
    r"(?P<bearer>(?i:bearer)\s+)\S+"
    r"|\bsl_[A-Za-z0-9_-]{16,}"
    r"|\bwhsec_[A-Za-z0-9+/=_-]{8,}"
    # A run this long of base64 characters is an encoded payload (an image), not prose.
    r"|[A-Za-z0-9+/]{200,}={0,2}"
)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Loggers that write through handlers of their own instead of the root logger's.
_OWN_HANDLER_LOGGERS = ("gunicorn.error", "gunicorn.access")

# Immutable default: every log_context() block sets a fresh mapping, never mutates one.
_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "sightline_log_context", default=MappingProxyType({})
)


def redact(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` with secrets and base64 payloads replaced and cut at ``limit`` chars."""
    cleaned = _SECRETS.sub(
        lambda m: f"{m['bearer']}[redacted]" if m["bearer"] else "[redacted]", text
    )
    if len(cleaned) > limit:
        return f"{cleaned[:limit]}… [{len(cleaned) - limit} chars cut]"
    return cleaned


def _safe(value: Any) -> Any:
    """A JSON-ready, redacted copy of ``value`` (containers walked, others stringified)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_safe(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields)."""

    def __init__(self, role: str, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._role = role
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not lose the event
            message = f"{record.msg!r} % {record.args!r}"
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(message),
            "role": self._role,
            "pid": record.process,
        }
        entry.update(_safe(self._static))
        entry.update(_safe(_context.get()))
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            entry.update(_access_fields(record.args))
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and not name.startswith("_"):
                entry[name] = _safe(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a gunicorn access record worth querying; the query string is left
    out (it is in ``message`` already, redacted)."""
    return {
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "status": _int_or_none(atoms.get("s")),
        "duration_ms": round(int(atoms.get("D", 0)) / 1000, 1),
        "remote_addr": atoms.get("h"),
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs, told apart from others by type."""


def configure_logging(level: str | int, role: str, **static: Any) -> None:
    """Send every log record of this process to stderr as JSON, at ``level`` and above.

    Replaces plain stream handlers on the root logger (``logging.basicConfig``'s, an
    earlier call's) and re-formats gunicorn's own handlers; handlers writing elsewhere
    (a test's capture) are kept. ``static`` fields (``worker``, ``device``) go on every
    line. Safe to call again, e.g. once a worker knows its device.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) in (logging.StreamHandler, _JsonHandler) and getattr(
            handler, "stream", None
        ) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
            root.removeHandler(handler)
    formatter = JsonFormatter(role, static)
    handler = _JsonHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _OWN_HANDLER_LOGGERS:
        for own in logging.getLogger(name).handlers:
            own.setFormatter(formatter)
    # Python's warnings (deprecations from libraries) then come out as JSON lines too.
    logging.captureWarnings(True)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged in this context (thread or task) until the
    block ends; nested blocks add to the outer ones."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)
