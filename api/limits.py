"""Per-key request rate and queued-jobs cap: 429 with ``Retry-After``.

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
    bucket = f"sightline:rate:{key.id}:{int(now // window)}"
    try:
        pipe = client.pipeline()
        pipe.incr(bucket)
        pipe.expire(bucket, window + 1)
        used = int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("rate limit not enforced: Redis unreachable (%s)", type(exc).__name__)
        return
    if used > count:
        retry_after = max(1, math.ceil(window - now % window))
        raise TooManyRequests(
            f"rate limit of {count} requests per {window} s reached; retry in {retry_after} s",
            retry_after=retry_after,
        )


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
            code="queue_full",
        )
    svc.queued.counted(key.tenant_id, queued + adding)
