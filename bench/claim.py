"""The fair claim's cost: 100,000 queued jobs of 1,000 tenants against those of 1 tenant.

Each case is a scratch PostgreSQL database holding 100,000 queued bulk jobs (of one
tenant, or 100 each of 1,000 tenants) and 5,000 jobs started within the fair-share
window (what the claim counts per tenant). The claim a worker runs
(``shared.lifecycle.claim``, 8 jobs) is timed ``--rounds`` times per case, each in a
transaction rolled back afterwards so every round sees the same queue; the cases
alternate round by round so that noise on this shared machine hits both alike. Prints
the median and 95th percentile of each case and their ratio. PostgreSQL only.

    python bench/claim.py [--rounds 200] [--jobs 100000] [--tenants 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import harness  # noqa: F401  (puts the checkout on sys.path)
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared import lifecycle
from shared.db import create_engine_for, session_factory
from shared.settings import Settings
from tests.services import postgres_server, scratch_database

CLAIM_SIZE = 8
WINDOW_S = 60
STARTED = 5_000

# Rows for generate_series: every column a job must have, nothing a claim reads besides.
_JOBS = """
INSERT INTO jobs (id, tenant_id, api_key_id, status, priority, prompt, image_key,
    image_sha256, image_width, image_height, options, thinking, created_at, started_at,
    deadline_at, use_cache, cached, attempts)
SELECT gen_random_uuid(), t.id, t.id, :status, 'bulk', 'p', 'k', 'sha', 8, 8, '{}', false,
    now() - interval '1 hour' + n * interval '1 ms', :started, now() + interval '1 day',
    true, false, :attempts
FROM generate_series(1, :count) AS n
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS slot FROM tenants) AS t
    ON t.slot = n % :tenants
"""


def fill(sessions: sessionmaker[Session], *, tenants: int, jobs: int) -> None:
    """``tenants`` tenants (one key each), ``jobs`` queued jobs spread evenly over them,
    and :data:`STARTED` jobs that succeeded within the window."""
    with sessions.begin() as session:
        for index in range(tenants):
            tenant = uuid.uuid4()
            session.execute(
                text(
                    "INSERT INTO tenants (id, name, created_at, webhook_secret, weight) "
                    "VALUES (:id, :name, now(), 'whsec_x', 1)"
                ),
                {"id": tenant, "name": f"tenant-{index}"},
            )
            session.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, name, prefix, key_sha256, created_at) "
                    "VALUES (:id, :id, :name, 'sk', :sha, now())"
                ),
                {"id": tenant, "name": f"key-{index}", "sha": uuid.uuid4().hex * 2},
            )
        common = {"tenants": tenants}
        session.execute(
            text(_JOBS),
            {**common, "status": "queued", "started": None, "attempts": 0, "count": jobs},
        )
        session.execute(
            text(_JOBS.replace(":started", "now() - interval '30 seconds'")),
            {**common, "status": "succeeded", "attempts": 1, "count": STARTED},
        )
    with sessions.kw["bind"].connect() as connection:  # as autovacuum leaves a table
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def time_claim(sessions: sessionmaker[Session]) -> float:
    """Seconds one claim of :data:`CLAIM_SIZE` jobs takes; rolled back."""
    with sessions() as session:
        session.execute(text("SELECT 1"))  # connection checked out before the clock starts
        started = time.perf_counter()
        claimed = lifecycle.claim(
            lifecycle.JobChanges(session),
            worker="bench",
            token=uuid.uuid4(),
            limit=CLAIM_SIZE,
            lease_s=60,
            max_attempts=3,
            fair_share_window_s=WINDOW_S,
        )
        elapsed = time.perf_counter() - started
        session.rollback()
    if len(claimed) != CLAIM_SIZE:
        raise SystemExit(f"claimed {len(claimed)} jobs, expected {CLAIM_SIZE}")
    return elapsed


@contextmanager
def database(admin_url: str, *, tenants: int, jobs: int) -> Iterator[sessionmaker[Session]]:
    with scratch_database(admin_url) as url:
        settings = Settings(database_url=url)
        upgrade(settings)
        engine = create_engine_for(settings)
        try:
            sessions = session_factory(engine)
            fill(sessions, tenants=tenants, jobs=jobs)
            yield sessions
        finally:
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    args = parser.parse_args()
    with ExitStack() as stack:
        admin = stack.enter_context(postgres_server())
        if not admin.startswith("postgresql"):
            raise SystemExit("bench/claim.py measures PostgreSQL only")
        print(f"filling: {args.jobs:,} queued jobs, 1 tenant and {args.tenants:,} tenants")
        cases = {
            "1 tenant": stack.enter_context(database(admin, tenants=1, jobs=args.jobs)),
            f"{args.tenants:,} tenants": stack.enter_context(
                database(admin, tenants=args.tenants, jobs=args.jobs)
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for sessions in cases.values():  # warm the caches and the plans
            time_claim(sessions)
        for _ in range(args.rounds):
            for name, sessions in cases.items():
                times[name].append(time_claim(sessions))
    print(f"claim of {CLAIM_SIZE} jobs, {args.rounds} rounds each:")
    medians = {}
    for name, samples in times.items():
        medians[name] = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[-1]
        print(f"  {name:>14}: median {medians[name] * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    one, many = medians.values()
    print(f"ratio (many tenants ÷ 1 tenant, median): {many / one:.2f}")


if __name__ == "__main__":
    main()
