"""Per-key request rate, batch item rate and queued-jobs cap: 429 with ``Retry-After``.

The rate limit is a fixed window counted in Redis (the broker's server), shared by every
API process: ``N/S`` allows N requests per key in each S-second window. If Redis cannot
be reached the request is let through (and logged): a broker outage must not also take
the API down, and submissions are safe in the database meanwhile. The queue cap counts
the tenant's queued jobs in the database, exactly near the cap
(:class:`api.queued_memo.QueuedMemo`).
"""

from __future__ import annotations

import logging
import math
import time

import redis
from sqlalchemy import func, select

from api.context import Services
from shared.error_codes import ErrorCode
from shared.errors import TooManyRequests
from shared.models import ApiKey, Job, JobStatus

log = logging.getLogger(__name__)

# While jobs drain, a caller over its queue cap should come back after about this long.
QUEUE_CAP_RETRY_S = 30


def parse_rate(rate: str) -> tuple[int, int]:
    """``"N/S"`` → ``(N, S)``; ``ValueError`` unless both are integers and S ≥ 1."""
    count, _, window = rate.partition("/")
    parsed = int(count), int(window)
    if parsed[0] < 0 or parsed[1] < 1:
        raise ValueError(f"rate limit {rate!r} must be N/S with N >= 0, S >= 1")
    return parsed


def enforce_rate(svc: Services, client: redis.Redis, key: ApiKey) -> None:
    """Count this request against ``key``'s window; :class:`TooManyRequests` past it."""
    count, window = parse_rate(key.rate_limit or svc.settings.rate_limit)
    if count == 0:
        return
    now = time.time()
    used = _add_to_window(client, f"sightline:rate:{key.id}:{int(now // window)}", 1, window)
    if used is not None and used > count:
        retry_after = max(1, math.ceil(window - now % window))
        raise TooManyRequests(
            f"rate limit of {count} requests per {window} s reached; retry in {retry_after} s",
            retry_after=retry_after,
        )


def enforce_item_rate(svc: Services, client: redis.Redis, key: ApiKey, items: int) -> None:
    """Count a batch's ``items`` against ``key``'s item window (``batch_item_rate_limit``,
    separate from the request rate, so a 10,000-item batch weighs 10,000 here and one
    there); :class:`TooManyRequests` (``item_rate_limited``) past it. A refused batch is
    taken back out of the window: only accepted requests use it up."""
    count, window = parse_rate(svc.settings.batch_item_rate_limit)
    if count == 0:
        return
    now = time.time()
    bucket = f"sightline:items:{key.id}:{int(now // window)}"
    used = _add_to_window(client, bucket, items, window)
    if used is None or used <= count:
        return
    _add_to_window(client, bucket, -items, window)
    retry_after = max(1, math.ceil(window - now % window))
    raise TooManyRequests(
        f"this batch's {items} items would pass the limit of {count} batch items per "
        f"{window} s ({used - items} used); retry in {retry_after} s",
        retry_after=retry_after,
        code=ErrorCode.ITEM_RATE_LIMITED,
    )


def _add_to_window(client: redis.Redis, bucket: str, amount: int, window: int) -> int | None:
    """Add ``amount`` to the counter ``bucket`` (expiring after its window) and return
    the new total; ``None`` (logged) if Redis cannot be reached: the limit is then not
    enforced rather than taking the API down with the broker."""
    try:
        pipe = client.pipeline()
        pipe.incrby(bucket, amount)
        pipe.expire(bucket, window + 1)
        return int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("rate limit not enforced: Redis unreachable (%s)", type(exc).__name__)
        return None


def enforce_queue_cap(svc: Services, key: ApiKey, adding: int) -> None:
    """:class:`TooManyRequests` (``queue_full``) if ``adding`` more jobs would take the
    queued jobs of ``key``'s tenant past the key's cap (when the queue is counted:
    :class:`api.queued_memo.QueuedMemo`)."""
    cap = key.max_queued if key.max_queued is not None else svc.settings.max_queued_jobs
    if cap == 0 or svc.queued.admit(key.tenant_id, adding, cap):
        return
    with svc.sessions() as session:
        queued = (
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.tenant_id == key.tenant_id, Job.status == JobStatus.QUEUED)
            )
            or 0
        )
    if queued + adding > cap:
        raise TooManyRequests(
            f"{queued} jobs already queued for this tenant; this key's cap is {cap}",
            retry_after=QUEUE_CAP_RETRY_S,
            code=ErrorCode.QUEUE_FULL,
        )
    svc.queued.counted(key.tenant_id, queued + adding)
