"""The batch service: claim → infer → persist, for whatever is queued.

A task message only wakes the worker up; the batch is formed from the database. The job
named in the message is claimed first, then whatever else is claimable (interactive
before bulk, oldest first), up to ``max_batch_size``. A partial batch waits for
stragglers only while they keep arriving and never longer than ``max_batch_wait_ms``;
when nothing else is queued a lone job starts after one quick check.

Failures stay with their job:

* a job past its deadline fails as ``expired`` without touching the model;
* an image that does not decode fails alone before the model runs;
* a forward pass that raises is split in halves and retried until the culprit runs
  alone, and only it fails (``inference_error``);
* a job that was claimed before (its worker died mid-batch) is claimed one at a time and
  runs alone, after the fresh jobs' results are committed, so a job that kills its
  worker only takes itself down; after ``max_attempts`` claims the sweeper fails it as
  ``worker_lost``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from shared import lifecycle
from shared.blobs import BlobStore
from shared.db import transaction
from shared.error_codes import JobErrorCode
from shared.lifecycle import Outcome
from shared.models import Job, JobStatus, utcnow
from shared.presets import Policy
from shared.settings import Settings
from worker import scheduling
from worker.model.base import GenerationOptions, GenerationRequest, ModelBackend
from worker.result_cache import cached_results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    """What one :meth:`BatchService.run` did: every outcome it wrote, in claim order;
    ``full`` when it claimed a whole batch (so more work may be waiting)."""

    outcomes: list[Outcome] = field(default_factory=list)
    full: bool = False

    def status_of(self, job_id: uuid.UUID) -> JobStatus | None:
        """The final status this run gave ``job_id``, or ``None`` if it did not run it."""
        return next((o.status for o in self.outcomes if o.job_id == job_id), None)


@dataclass
class _Item:
    job: Job
    request: GenerationRequest


# Called after each commit of results with the jobs settled and the webhook events written.
AfterCommit = Callable[[Sequence[Job], list[str]], None]


class BatchService:
    """Runs batches for one worker process: one model, one device, one name."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        backend: ModelBackend,
        worker_name: str,
        after_commit: AfterCommit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._blobs = blobs
        self._backend = backend
        self.worker_name = worker_name
        self._after_commit = after_commit
        self._clock = clock

    def run(self, job_id: uuid.UUID | None) -> BatchReport:
        """Claim a batch (``job_id`` first if given and claimable), run it, commit the
        results.

        Returns only after every result is committed, so the caller may ack its message.
        A run that finds nothing claimable (a duplicate or late message) does nothing.
        """
        token = uuid.uuid4()
        jobs = self._collect(job_id, token)
        if not jobs:
            return BatchReport()
        full = len(jobs) >= self._settings.max_batch_size
        split = scheduling.triage(jobs, utcnow())
        expired, fresh, suspects = split.expired, split.fresh, split.suspects
        outcomes = [
            _failed(job, JobErrorCode.EXPIRED, lifecycle.EXPIRED_MESSAGE) for job in expired
        ]
        with self._leases_renewed(token):
            hits = self._from_cache(fresh)
            outcomes += hits
            answered = {outcome.job_id for outcome in hits}
            outcomes += self._infer([job for job in fresh if job.id not in answered])
            self._persist(token, [*expired, *fresh], outcomes)
            for suspect in suspects:
                log.warning(
                    "job %s was claimed %d times; running it alone", suspect.id, suspect.attempts
                )
                alone = self._infer([suspect])
                self._persist(token, [suspect], alone)
                outcomes += alone
        return BatchReport(outcomes, full)

    def _collect(self, prefer: uuid.UUID | None, token: uuid.UUID) -> list[Job]:
        """Claim a batch (``scheduling.collect``), in running order."""
        limit = self._settings.max_batch_size
        jobs = scheduling.collect(
            self._claim(limit, prefer, token, with_abandoned=True),
            lambda room: self._claim(room, None, token, with_abandoned=False),
            limit=limit,
            wait_s=self._settings.max_batch_wait_ms / 1000,
            clock=self._clock,
            sleep=time.sleep,
        )
        return sorted(jobs, key=lambda job: scheduling.claim_order(job, prefer))

    def _claim(
        self, limit: int, prefer: uuid.UUID | None, token: uuid.UUID, *, with_abandoned: bool
    ) -> list[Job]:
        with transaction(self._sessions) as session:
            return lifecycle.claim(
                lifecycle.JobChanges(session),
                worker=self.worker_name,
                token=token,
                limit=limit,
                lease_s=self._settings.job_lease_s,
                max_attempts=self._settings.max_attempts,
                prefer=prefer,
                with_abandoned=with_abandoned,
            )

    def _from_cache(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Outcomes for jobs an identical earlier request already answered on this model
        revision within the cache TTL: no forward pass for them."""
        wanted = [job for job in jobs if job.use_cache and job.cache_key]
        if not wanted:
            return []
        with self._sessions() as session:
            earlier = cached_results(
                session,
                [job.cache_key for job in wanted if job.cache_key],
                self._backend.model_revision,
                self._settings.cache_ttl_s,
            )
        return [
            Outcome(
                job_id=job.id,
                status=JobStatus.SUCCEEDED,
                result=hit.result,
                result_json=hit.result_json,
                reasoning=hit.reasoning,
                action=hit.action,
                output_tokens=hit.output_tokens,
                queue_ms=_queue_ms(job),
                cached=True,
                model_revision=hit.model_revision,
            )
            for job in wanted
            if job.cache_key
            and (hit := earlier.get(job.cache_key)) is not None
            # The key names the tenant already; never hand one tenant another's answer.
            and hit.tenant_id == job.tenant_id
        ]

    def _persist(self, token: uuid.UUID, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> None:
        with lifecycle.unit_of_work(
            self._sessions, lambda events: self._after_commit(jobs, events)
        ) as changes:
            lifecycle.finish(changes, token=token, outcomes=outcomes)

    @contextmanager
    def _leases_renewed(self, token: uuid.UUID) -> Iterator[None]:
        """Renew the claim's lease every third of its length until the block ends, so a
        batch of any length keeps its jobs while a dead worker's jobs free up quickly."""
        lease_s = self._settings.job_lease_s
        done = threading.Event()

        def renew() -> None:
            while not done.wait(lease_s / 3):
                try:
                    with transaction(self._sessions) as session:
                        lifecycle.renew(lifecycle.JobChanges(session), token=token, lease_s=lease_s)
                except Exception:
                    log.exception("could not renew the lease of claim %s", token)

        renewer = threading.Thread(target=renew, name=f"lease-{token}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _infer(self, jobs: Sequence[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        groups: dict[GenerationOptions, list[_Item]] = {}
        for job in jobs:
            try:
                image = self._load_image(job)
            except Exception as exc:
                outcomes.append(
                    _failed(job, JobErrorCode.IMAGE_UNDECODABLE, f"cannot decode image: {exc}")
                )
                continue
            options = GenerationOptions(
                max_new_tokens=int(job.options["max_new_tokens"]),
                temperature=float(job.options.get("temperature", 0.0)),
            )
            request = GenerationRequest(
                image=image,
                prompt=job.prompt,
                options=options,
                json_schema=job.response_schema,
                thinking=job.thinking,
            )
            item = _Item(job, request)
            groups.setdefault(options, []).append(item)
        for items in groups.values():
            outcomes.extend(self._generate_isolated(items))
        return outcomes

    def _load_image(self, job: Job) -> Image.Image:
        with Image.open(io.BytesIO(self._blobs.get(job.image_key))) as image:
            return image.convert("RGB")

    def _generate_isolated(self, items: list[_Item]) -> list[Outcome]:
        """Generate for ``items`` in one pass; on failure split and retry the halves
        (``scheduling.run_isolated``), so only the culprit fails."""

        def failed(item: _Item, exc: Exception) -> Outcome:
            log.warning("job %s failed in the model: %r", item.job.id, exc)
            return _failed(item.job, JobErrorCode.INFERENCE_ERROR, f"{type(exc).__name__}: {exc}")

        def split(size: int, exc: Exception) -> None:
            log.warning("batch of %d failed (%r); splitting to isolate the culprit", size, exc)

        return scheduling.run_isolated(items, self._generate, failed, split)

    def _generate(self, items: list[_Item]) -> list[Outcome]:
        """One forward pass for ``items``; raises what the model raised."""
        started = self._clock()
        results = self._backend.generate([item.request for item in items])
        elapsed_ms = int((self._clock() - started) * 1000)
        return [
            Outcome(
                job_id=item.job.id,
                status=JobStatus.SUCCEEDED,
                result=result.text,
                result_json=result.json,
                reasoning=result.reasoning,
                action=Policy.model_validate(item.job.policy).decide(result.json)
                if item.job.policy
                else None,
                output_tokens=result.tokens,
                model_revision=self._backend.model_revision,
                batch_size=len(items),
                inference_ms=elapsed_ms,
                queue_ms=_queue_ms(item.job),
            )
            for item, result in zip(items, results, strict=True)
        ]


def _queue_ms(job: Job) -> int | None:
    if job.started_at is None:
        return None
    return int((job.started_at - job.created_at).total_seconds() * 1000)


def _failed(job: Job, code: str, message: str) -> Outcome:
    return Outcome(
        job_id=job.id,
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message,
        queue_ms=_queue_ms(job),
    )
