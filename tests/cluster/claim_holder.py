"""A claim left open: what a worker's session looks like to PostgreSQL when its host is
cut off (or frozen) between the claim statement and its COMMIT.

``python -m tests.cluster.claim_holder`` (with the cluster's ``SIGHTLINE_*`` settings)
claims queued jobs with the worker's own engine (:func:`shared.db.worker_engine`) and
claim statement, retrying until it gets at least one, prints ``holding ID ...`` and then
never commits: the jobs stay locked for as long as the database keeps its session.
"""

from __future__ import annotations

import threading
import uuid

from shared import lifecycle
from shared.db import session_factory, worker_engine
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    sessions = session_factory(worker_engine(settings))
    while True:
        session = sessions()
        session.begin()
        jobs = lifecycle.claim(
            lifecycle.JobChanges(session),
            worker="holder@w1",
            token=uuid.uuid4(),
            limit=4,
            lease_s=settings.job_lease_s,
            max_attempts=settings.max_attempts,
            fair_share_window_s=settings.fair_share_window_s,
            with_abandoned=False,
        )
        if jobs:
            break
        session.rollback()
        session.close()
    print("holding", *(str(job.id) for job in jobs), flush=True)
    threading.Event().wait()  # the transaction stays open until the process is killed


if __name__ == "__main__":
    main()
