"""The batch service: claims jobs into a running batch and commits each as its row ends.

A task message only wakes the worker up; work comes from the database. A run claims the
job the message named (if still claimable) and as many others as the batch has room for
(:func:`worker.scheduling.room`: ``max_batch_size`` rows, plus ``interactive_headroom``
rows only interactive jobs may take), then steps the engine
(:mod:`worker.model.engine`). Between steps it:

- claims more whenever rows are free (interactive first, oldest first), without waiting
  for the running rows: an interactive job joins at the next step; bulk jobs come
  ``prefill_group`` at a time, prefilled in one pass, those beyond the free rows added
  ahead (:class:`~worker.model.engine.EngineLimits`) to take rows as they free, and not
  while an interactive row decodes its first tokens (for a bounded number of steps), so
  that no bulk prefill pauses a short interactive answer
  (:func:`worker.scheduling.bulk_joins`);
- aborts the rows of jobs that are no longer running under its claim (canceled,
  purged, or taken over after a lost lease), so their slot is free at the next step;
- commits the jobs whose rows finished in the step, all in one transaction, and wakes
  the webhook sender after it; the commit is made on a thread of its own while the next
  step runs (:mod:`worker.committer`), and a run returns only once all are made.

An idle worker that claimed less than a full batch waits for company while jobs keep
arriving, never longer than ``max_batch_wait_ms``, before its first step. A run returns
when its batch is empty and nothing more is claimable: ending a run earlier would leave
the batch's longest rows running alone until it empties, a few seconds of a mostly idle
batch each time. On shutdown it claims nothing, gives the running rows ``drain_s`` to
finish and hands what is left back to the queue.

Failures stay with their job:

* a job past its deadline fails as ``expired`` without touching the model;
* an image that does not decode fails alone before the model runs;
* a step that raises drops the whole batch (:class:`~worker.model.engine.StepFailed`);
  the dropped jobs run again in halves, apart from everything else, until the culprit
  runs alone, and only it fails (``inference_error``);
* a commit the database refuses (a value it cannot store) is made again one job per
  transaction, and only the job whose result is refused alone fails
  (``result_unstorable``);
* a job that was claimed before (its worker died while running it) waits until the
  batch is empty and then runs alone, with no company, so a job that kills its worker
  only takes itself down; after ``max_attempts`` claims the sweeper fails it as
  ``worker_lost``. After it, the worker takes the other abandoned jobs, one at a time
  and each alone, before queued work: a dead worker's whole batch runs again in
  seconds, not one job per batch of queued work.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from shared import lifecycle
from shared.blobs import BlobMissing, BlobStore
from shared.db import retrying_conflicts, transaction
from shared.error_codes import JobErrorCode
from shared.job_feed import JobFeed
from shared.lifecycle import Outcome
from shared.models import Job, JobStatus, Priority, utcnow
from shared.presets import Policy
from shared.settings import Settings
from worker import scheduling
from worker.committer import Committed, Committer
from worker.job_notices import JobNotices
from worker.metrics import WorkerMetrics
from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult
from worker.model.engine import Engine, StepEvents, StepFailed
from worker.queue_hint import QueueHint
from worker.result_cache import cached_results
from worker.step_events import StepPublisher

log = logging.getLogger(__name__)

# After a claim that found nothing, the earliest the next one asks again: a batch with
# free rows would otherwise run one claim transaction per step.
IDLE_CLAIM_S = 0.05

# After the blob store failed to give a claimed job's image (not a missing image: an
# outage), how long a run claims nothing more: the jobs it could not read are back in
# the queue, and the sweeper wakes a worker for them later.
STORE_BACKOFF_S = 5.0

# The longest error message stored for a result the database refused (the driver's
# message may quote the value).
MAX_ERROR_MESSAGE = 500


@dataclass(frozen=True)
class BatchReport:
    """What one :meth:`BatchService.run` did: every outcome it wrote, in commit order;
    ``cut_short`` when a shutdown stopped it while more may be queued."""

    outcomes: list[Outcome] = field(default_factory=list)
    cut_short: bool = False

    def status_of(self, job_id: uuid.UUID) -> JobStatus | None:
        """The final status this run gave ``job_id``, or ``None`` if it did not run it."""
        return next((o.status for o in self.outcomes if o.job_id == job_id), None)


# Called after each commit of results with the jobs settled and the webhook events written.
AfterCommit = Callable[[Sequence[Job], list[str]], None]


@dataclass
class _Row:
    """A claimed job in the engine: its request and when it joined."""

    job: Job
    request: GenerationRequest
    joined_at: float
    tokens: int = 0  # decoded so far


@dataclass
class _Run:
    """The state of one :meth:`BatchService.run`."""

    token: uuid.UUID
    on_settled: Callable[[Sequence[Outcome]], None]
    on_step: Callable[[], None]
    committer: Committer
    rows: dict[uuid.UUID, _Row] = field(default_factory=dict)
    suspects: list[Job] = field(default_factory=list)
    alone: uuid.UUID | None = None
    after_suspect: bool = False  # a suspect ran: more abandoned jobs may be waiting
    outcomes: list[Outcome] = field(default_factory=list)
    idle_until: float = 0.0  # no bulk claim before: nothing was queued
    interactive_idle_until: float = 0.0  # likewise for interactive-only claims
    waited: int = 0  # steps bulk joins were held for interactive rows (scheduling.bulk_joins)
    isolating: set[uuid.UUID] = field(default_factory=set)  # dropped by the last failed step


class BatchService:
    """Runs the batch of one worker process: one engine, one device, one name.

    ``after_commit`` wakes the webhook sender; ``requeue`` leaves wake-ups for jobs
    handed back; ``stopping`` says whether a shutdown was asked for; ``queued`` whether
    a job may be queued that the last claim did not see (a cheap check, so a batch
    with room does not try a claim in the database every step).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        engine: Engine,
        model_revision: str,
        worker_name: str,
        metrics: WorkerMetrics,
        publisher: StepPublisher,
        feed: JobFeed,
        notices: JobNotices,
        after_commit: AfterCommit,
        requeue: Callable[[Sequence[Job]], None],
        stopping: Callable[[], bool],
        queued: QueueHint,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._blobs = blobs
        self._engine = engine
        self._revision = model_revision
        self.worker_name = worker_name
        self._metrics = metrics
        self._publisher = publisher
        self._feed = feed
        self._notices = notices
        self._after_commit = after_commit
        self._requeue = requeue
        self._stopping = stopping
        self._queued = queued
        self._clock = clock
        # No claim before: the blob store just failed. Kept across runs: each wake-up
        # is a run, and a run that claimed at once would spend the queue's wake-ups on
        # the outage, a claim and a hand-back each, leaving the jobs to the sweeper.
        self._store_backoff_until = 0.0

    def run(
        self,
        prefer: uuid.UUID | None,
        *,
        on_settled: Callable[[Sequence[Outcome]], None] = lambda outcomes: None,
        on_step: Callable[[], None] = lambda: None,
    ) -> BatchReport:
        """Claim (``prefer`` first if given and claimable) and step until the batch is
        empty and nothing more is claimable (see the module docstring); ``on_settled``
        is told the outcomes of every commit as it happens, ``on_step`` is called before
        every step (the task sends the worker's heartbeats from it). Every outcome is
        committed before it returns, so the caller may ack its message."""
        for job_id in self._engine.running:
            # Left by a run that raised (the database went away…): its claim is gone
            # with it, and its lease, no longer renewed, frees the job for a retry.
            log.warning("dropping job %s left in the engine by a failed run", job_id)
            self._engine.abort(job_id)
        self._wait_out_store_backoff()
        token = uuid.uuid4()
        committer = Committer(partial(self._write_apart, token))
        run = _Run(token, on_settled, on_step, committer)
        # The committer stops first: its last commits are made under a renewed lease.
        with (
            self._leases_renewed(token),
            committer.running(),
            self._queued.listening(),
            self._publisher.listening(),
        ):
            self._admit(run, self._first_claim(run, prefer))
            while True:
                if self._stopping():
                    self._drain(run)
                    self._report(run, committer.flush())
                    return BatchReport(run.outcomes, cut_short=True)
                claimed = self._claim_between_steps(run)
                if not self._engine.running:
                    if run.suspects:
                        self._start_alone(run)
                    elif not claimed:
                        break
                    continue
                self._abort_gone(run)
                on_step()
                self._step(run)
            self._report(run, committer.flush())
        return BatchReport(run.outcomes)

    # -- claiming --------------------------------------------------------------------

    def _first_claim(self, run: _Run, prefer: uuid.UUID | None) -> list[Job]:
        """The first claim of an idle worker, waiting briefly for company
        (``scheduling.collect``)."""
        limit = self._settings.max_batch_size
        jobs = scheduling.collect(
            self._claim(run, limit, prefer=prefer, with_abandoned=True),
            lambda room: self._claim(run, room),
            limit=limit,
            wait_s=self._settings.max_batch_wait_ms / 1000,
            clock=self._clock,
            sleep=time.sleep,
        )
        return sorted(jobs, key=lambda job: scheduling.claim_order(job, prefer))

    def _claim_between_steps(self, run: _Run) -> list[Job]:
        """Claim into the free rows (``scheduling.room``), interactive first; bulk jobs
        join a running batch as ``scheduling.bulk_joins`` says, a group at a time, those
        beyond the free rows added ahead. Nothing while a suspect runs alone or waits
        to. While rows run, a claim is made only when the broker says a job of its kind
        may be queued that the last claim did not see (:mod:`worker.queue_hint`), and a
        kind of claim that found nothing is not tried again sooner than
        :data:`IDLE_CLAIM_S` later."""
        if run.alone is not None or run.suspects or self._clock() < self._store_backoff_until:
            return []
        settings = self._settings
        engine = self._engine
        idle = not engine.running
        if idle and run.after_suspect:
            # Abandoned jobs come one by one, each alone, before any queued work: a dead
            # worker's batch runs again in (number of jobs) x (one job's time), not with
            # a whole batch of queued jobs in front of each.
            suspect = self._claim(run, 0, with_abandoned=True)
            if suspect:
                self._admit(run, suspect)
                return suspect
            run.after_suspect = False
        now = self._clock()
        ahead = set(engine.ahead)
        seated = [row for job_id, row in run.rows.items() if job_id not in ahead]
        room = scheduling.room(
            len(seated),
            bulk_rows=sum(1 for row in seated if row.job.priority is Priority.BULK),
            max_rows=settings.max_batch_size,
            headroom=settings.interactive_headroom,
            free=engine.free_rows,
        )
        bulk = room.any
        interactive = room.interactive_only + room.any
        if not idle:
            if room.any:
                bulk = 0 if now < run.idle_until else self._bulk_joins(run, room.any, len(ahead))
            if now < run.interactive_idle_until:
                interactive = 0
            if bulk or interactive:
                self._queued.read()
                if not self._queued.waiting(Priority.INTERACTIVE):
                    interactive = 0
                if not self._queued.waiting():
                    bulk = 0
        jobs: list[Job] = []
        interactive = max(0, interactive - min(bulk, room.any))
        if bulk:
            jobs = self._group(run, bulk, seats=room.any)
            if len(jobs) < bulk:
                run.idle_until = now + IDLE_CLAIM_S
            if len(jobs) < min(bulk, room.any):
                interactive = 0  # nothing else is queued
        if interactive:
            found = self._claim(run, interactive, only=Priority.INTERACTIVE)
            if len(found) < interactive:
                self._queued.drained(Priority.INTERACTIVE)
            if not found:
                run.interactive_idle_until = now + IDLE_CLAIM_S
            jobs += found
        self._admit(
            run, sorted(jobs, key=lambda job: scheduling.claim_order(job, None)), seats=room.any
        )
        return jobs

    def _group(self, run: _Run, count: int, *, seats: int) -> list[Job]:
        """Claim a group of ``count`` jobs joining a running batch: for its first ``seats``
        (the free rows) jobs of either priority, interactive first; beyond them only bulk
        jobs, which are added ahead: an interactive job there would wait for a row
        behind them, where left in the queue it takes the next free row (headroom
        included). One claim when no interactive job is queued (the usual bulk load),
        two otherwise. An abandoned job comes in as a suspect: claims stop until it has
        run alone. Fewer than ``count`` when fewer are queued: the queue hint is then
        told so."""
        if count <= seats or not self._queued.waiting(Priority.INTERACTIVE):
            jobs = self._claim(run, count, with_abandoned=True)
            if len(jobs) < count:
                self._queued.drained()
            return jobs
        jobs = self._claim(run, seats, with_abandoned=True)
        if len(jobs) < seats:
            self._queued.drained()
        if sum(1 for job in jobs if job.attempts == 1) < seats:
            return jobs
        more = self._claim(run, count - seats, only=Priority.BULK)
        if len(more) < count - seats:
            self._queued.drained(Priority.BULK)
        return jobs + more

    def _bulk_joins(self, run: _Run, free: int, waiting_ahead: int) -> int:
        """``scheduling.bulk_joins`` for this run; counts the steps it held joins back."""
        count = scheduling.bulk_joins(
            free,
            group=self._settings.prefill_rows,
            free_ahead=self._engine.free_ahead,
            waiting_ahead=waiting_ahead,
            waited_steps=run.waited,
            interactive_tokens=[
                row.tokens for row in run.rows.values() if row.job.priority is Priority.INTERACTIVE
            ],
        )
        if count:
            run.waited = 0
        elif not waiting_ahead:
            run.waited += 1  # held back for an interactive row
        return count

    def _claim(
        self,
        run: _Run,
        limit: int,
        *,
        prefer: uuid.UUID | None = None,
        with_abandoned: bool = False,
        only: Priority | None = None,
    ) -> list[Job]:
        with lifecycle.unit_of_work(self._sessions, _no_events, self._feed) as changes:
            jobs = lifecycle.claim(
                changes,
                worker=self.worker_name,
                token=run.token,
                limit=limit,
                lease_s=self._settings.job_lease_s,
                max_attempts=self._settings.max_attempts,
                fair_share_window_s=self._settings.fair_share_window_s,
                prefer=prefer,
                with_abandoned=with_abandoned,
                only=only,
            )
        self._metrics.observe_claim(found=bool(jobs))
        return jobs

    def _admit(self, run: _Run, jobs: Sequence[Job], *, seats: int | None = None) -> None:
        """Settle or place claimed jobs: expired and cached ones settle at once, suspects
        wait to run alone, the rest join the engine (or fail alone: image, schema): the
        first ``seats`` of them (all when ``None``) to take a row at the next step, bulk
        jobs beyond that ahead, to take rows as they free."""
        if not jobs:
            return
        split = scheduling.triage(jobs, utcnow())
        outcomes = [
            _failed(job, JobErrorCode.EXPIRED, lifecycle.EXPIRED_MESSAGE) for job in split.expired
        ]
        hits = self._from_cache(split.fresh)
        outcomes += hits
        answered = {outcome.job_id for outcome in hits}
        joining = [job for job in split.fresh if job.id not in answered]
        unread: list[Job] = []
        for placed, job in enumerate(joining):
            ahead = seats is not None and placed >= seats and self._engine.free_ahead > 0
            if ahead and job.priority is Priority.INTERACTIVE and self._engine.free_rows > 0:
                ahead = False  # an interactive job takes headroom rather than wait
            try:
                failure = self._join(run, job, ahead=ahead)
            except _StoreFailed:
                unread.append(job)
                continue
            if failure is not None:
                outcomes.append(failure)
        run.suspects += split.suspects
        self._settle(run, [*split.expired, *split.fresh], outcomes)
        self._hand_back_unread(run, unread)

    def _join(self, run: _Run, job: Job, *, ahead: bool = False) -> Outcome | None:
        """Add ``job`` to the engine (``ahead``: see :meth:`_admit`); its failed outcome
        if it cannot run at all; :class:`_StoreFailed` if the blob store could not give
        its image (an outage, not a missing image)."""
        # Read apart from the decode: PIL reports a bad image as an OSError too, which
        # here would read as an outage and hand the job back for ever.
        try:
            data = self._blobs.get(job.image_key)
        except BlobMissing as exc:
            return _failed(job, JobErrorCode.IMAGE_UNDECODABLE, f"cannot decode image: {exc}")
        except OSError as exc:
            log.warning("job %s: the blob store failed (%s)", job.id, exc)
            raise _StoreFailed from exc
        try:
            image = _decoded(data)
        except Exception as exc:
            return _failed(job, JobErrorCode.IMAGE_UNDECODABLE, f"cannot decode image: {exc}")
        request = GenerationRequest(
            image=image,
            prompt=job.prompt,
            options=GenerationOptions(
                max_new_tokens=int(job.options["max_new_tokens"]),
                temperature=float(job.options.get("temperature", 0.0)),
            ),
            json_schema=job.response_schema,
            thinking=job.thinking,
        )
        try:
            self._engine.add(job.id, request, ahead=ahead)
        except MemoryError:
            raise  # the process's trouble, not the job's: the run ends, the job is retried
        except Exception as exc:  # a schema outside the subset, a prompt the processor refuses…
            # Preparing a request touches no other row: only this job fails.
            log.warning("job %s could not join the engine: %r", job.id, exc)
            return _failed(job, JobErrorCode.INFERENCE_ERROR, f"{type(exc).__name__}: {exc}")
        run.rows[job.id] = _Row(job, request, self._clock())
        return None

    def _hand_back_unread(self, run: _Run, jobs: Sequence[Job]) -> None:
        """Hand jobs whose image the blob store failed to give back to the queue (the
        claim not counted as an attempt) and claim nothing for ``STORE_BACKOFF_S``: an
        outage of the store fails no job, and no worker spins on it. No wake-up is left
        (a worker would take it at once): the sweeper sends one later, and any claim
        meanwhile takes them, oldest first."""
        if not jobs:
            return
        self._release(run.token, jobs)
        self._store_backoff_until = self._clock() + STORE_BACKOFF_S
        log.warning("the blob store failed: %d jobs handed back to the queue", len(jobs))

    def _wait_out_store_backoff(self) -> None:
        """Before a run's first claim, wait until ``STORE_BACKOFF_S`` has passed since
        the blob store last failed (or a shutdown is asked for)."""
        while not self._stopping() and (left := self._store_backoff_until - self._clock()) > 0:
            time.sleep(min(left, 0.1))

    def _start_alone(self, run: _Run) -> None:
        """Run the oldest suspect alone, or expire it if its deadline passed while it
        waited for the batch to empty (it was triaged when claimed, possibly minutes
        before)."""
        suspect = run.suspects.pop(0)
        run.after_suspect = True
        if scheduling.triage([suspect], utcnow()).expired:
            self._settle(
                run, [suspect], [_failed(suspect, JobErrorCode.EXPIRED, lifecycle.EXPIRED_MESSAGE)]
            )
            return
        log.warning("job %s was claimed %d times; running it alone", suspect.id, suspect.attempts)
        try:
            failure = self._join(run, suspect)
        except _StoreFailed:
            self._hand_back_unread(run, [suspect])
        else:
            if failure is not None:
                self._settle(run, [suspect], [failure])
            else:
                run.alone = suspect.id

    def _from_cache(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Outcomes for jobs an identical earlier request already answered on this model
        revision within the cache TTL: no engine work for them."""
        wanted = [job for job in jobs if job.use_cache and job.cache_key]
        if not wanted:
            return []
        with self._sessions() as session:
            earlier = cached_results(
                session,
                [job.cache_key for job in wanted if job.cache_key],
                self._revision,
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
                # The cache key holds the job's policy, so the hit's verdict is its own.
                policy_version=policy.version if (policy := _policy(job)) else None,
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

    # -- stepping --------------------------------------------------------------------

    def _step(self, run: _Run) -> None:
        """One engine step; commit the rows that ended in it; isolate the culprit of a
        failed step (:meth:`_isolate`)."""
        try:
            self._step_rows(run, run.rows)
        except StepFailed as failure:
            self._isolate(run, failure)

    def _step_rows(self, run: _Run, rows: dict[uuid.UUID, _Row]) -> None:
        """One engine step over ``rows`` (those of ``run.rows`` in the engine); commit
        the rows that ended in it. Raises :class:`StepFailed`."""
        events, now = self._timed_step(rows, run.token)
        ended = [run.rows.pop(job_id) for job_id in (*events.finished, *events.failed)]
        outcomes = [self._outcome(row, events, now) for row in ended]
        self._settle(run, [row.job for row in ended], outcomes)
        self._report(run, run.committer.take())

    def _timed_step(
        self, rows: dict[uuid.UUID, _Row], token: uuid.UUID
    ) -> tuple[StepEvents, float]:
        """One engine step over ``rows`` (claimed under ``token``), recorded in the
        metrics and published to watchers; returns its events and when it ended.
        :class:`StepFailed` is recorded, then raised. Any other error out of the engine
        is taken as one too: the engine's state is then unknown, so every row in it is
        aborted, and the rows it held when the step began (some may have ended inside
        the failed step) are what the failure dropped; not the rest of ``rows``, which
        were not in the engine (rows added ahead that a drain aborted: counted as
        suspects, they would come back with an attempt they never ran)."""
        before = self._engine.running
        count = len(before) - len(self._engine.ahead)
        started = self._clock()
        try:
            events = self._engine.step()
        except Exception as exc:
            self._metrics.observe_step(count, self._clock() - started, None)
            if isinstance(exc, StepFailed):
                raise
            for job_id in self._engine.running:
                self._engine.abort(job_id)
            raise StepFailed(before, exc) from exc
        now = self._clock()
        self._metrics.observe_step(count, now - started, len(events.tokens), events.prefilled)
        for job_id in events.tokens:
            row = rows.get(job_id)
            if row is None:
                continue
            if not row.tokens:
                self._metrics.observe_first_token(now - row.joined_at)
            row.tokens += 1
        self._publisher.publish(self._engine, events, token)
        return events, now

    def _outcome(self, row: _Row, events: StepEvents, now: float) -> Outcome:
        job_id = row.job.id
        if job_id in events.failed:
            return self._model_failed(row.job, events.failed[job_id])
        return self._succeeded(row, events.finished[job_id], len(events.tokens), now)

    def _succeeded(
        self, row: _Row, result: GenerationResult, batch_size: int, now: float
    ) -> Outcome:
        job = row.job
        policy = _policy(job)
        return Outcome(
            job_id=job.id,
            status=JobStatus.SUCCEEDED,
            result=result.text,
            result_json=result.json,
            reasoning=result.reasoning,
            action=policy.decide(result.json) if policy else None,
            policy_version=policy.version if policy else None,
            output_tokens=result.tokens,
            model_revision=self._revision,
            batch_size=max(batch_size, 1),
            inference_ms=int((now - row.joined_at) * 1000),
            queue_ms=_queue_ms(job),
        )

    def _model_failed(self, job: Job, exc: BaseException) -> Outcome:
        cause = exc.__cause__ if isinstance(exc, StepFailed) and exc.__cause__ else exc
        log.warning("job %s failed in the model: %r", job.id, cause)
        return _failed(job, JobErrorCode.INFERENCE_ERROR, f"{type(cause).__name__}: {cause}")

    def _isolate(self, run: _Run, failure: StepFailed) -> None:
        """Run the jobs a failed step dropped again, in halves and apart from everything
        else (``scheduling.split_failed``), so that only the culprit fails. They stay in
        ``run.rows`` until they end (:meth:`_run_apart`); a shutdown meanwhile hands them
        back as suspects (:meth:`_drain`)."""
        dropped = [run.rows[job_id] for job_id in failure.dropped if job_id in run.rows]
        run.isolating = {row.job.id for row in dropped}
        log.warning(
            "a step of %d rows failed (%r); isolating the culprit among jobs %s",
            len(dropped),
            failure,
            ", ".join(str(row.job.id) for row in dropped),
        )

        def split(size: int, exc: Exception) -> None:
            log.warning("%d rows failed again (%r); splitting", size, exc)

        def failed(row: _Row, exc: Exception) -> None:
            if run.rows.pop(row.job.id, None) is not None:
                self._settle(run, [row.job], [self._model_failed(row.job, exc)])

        def run_apart(group: list[_Row]) -> list[None]:
            self._run_apart(run, [row for row in group if row.job.id in run.rows])
            return []

        # Only a failed step splits: a database error while a row's result is written
        # is not the rows' failure, and the engine may still hold the group's rows.
        scheduling.split_failed(dropped, failure, run_apart, failed, split, catch=StepFailed)

    def _run_apart(self, run: _Run, group: list[_Row]) -> None:
        """Run ``group`` (rows of ``run.rows``, none in the engine) alone in the empty
        engine until every row has ended, each committed as it ends; raises
        :class:`StepFailed` if a step fails. As in any step, a row whose job is no longer
        this run's (canceled…) is aborted. On shutdown it stops at once: the rows not
        ended stay in ``run.rows``, for :meth:`_drain` to hand back to the queue."""
        if self._stopping():
            return
        for row in group:
            # A group of jobs dropped with the rows added ahead may outnumber the rows.
            self._engine.add(row.job.id, row.request, ahead=self._engine.free_rows <= 0)
            row.joined_at = self._clock()
        apart = [row.job.id for row in group]
        while True:
            if self._stopping():
                for job_id in apart:
                    self._engine.abort(job_id)
                return
            self._abort_gone(run)
            live = {job_id: run.rows[job_id] for job_id in apart if job_id in run.rows}
            if not live:
                return
            run.on_step()
            self._step_rows(run, live)

    def _abort_gone(self, run: _Run) -> None:
        """Abort the rows of jobs no longer running under this run's claim (canceled,
        purged, or taken over after a lost lease): their results would be discarded
        anyway. Only jobs the feed says may have moved are looked up
        (:mod:`worker.job_notices`)."""
        suspect = self._notices.to_check(run.rows.keys())
        if not suspect:
            return
        with self._sessions() as session:
            mine = set(
                session.scalars(
                    select(Job.id).where(
                        Job.id.in_(list(suspect)),
                        Job.status == JobStatus.RUNNING,
                        Job.claim_token == run.token,
                    )
                )
            )
        for job_id in suspect - mine:  # suspects are all running rows
            log.info("job %s is no longer this worker's (canceled?); aborting its row", job_id)
            self._engine.abort(job_id)
            self._publisher.forget(job_id)
            del run.rows[job_id]
            if run.alone == job_id:
                run.alone = None

    def _settle(self, run: _Run, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> None:
        """Hand ``outcomes`` to the committer (one transaction, then the sender is woken:
        :meth:`_write_apart`); they are reported once it has made it (:meth:`_report`)."""
        if not outcomes:
            return
        if run.alone in {outcome.job_id for outcome in outcomes}:
            run.alone = None
        run.committer.submit(jobs, outcomes)

    def _report(self, run: _Run, made: Sequence[Committed]) -> None:
        """Report the commits the committer made: add them to the run's outcomes, the
        metrics and the task's events (``run.on_settled``)."""
        for commit in made:
            settled = {outcome.job_id for outcome in commit.written}
            gone = [o.job_id for o in commit.outcomes if o.job_id not in settled]
            if gone:
                log.warning(
                    "results of %d jobs not written: no longer running under this claim "
                    "(canceled, or taken over after the lease ran out): %s",
                    len(gone),
                    ", ".join(map(str, gone)),
                )
            run.outcomes += commit.written
            self._metrics.observe_outcomes(commit.written)
            run.on_settled(commit.written)

    def _write_apart(
        self, token: uuid.UUID, jobs: Sequence[Job], outcomes: Sequence[Outcome]
    ) -> list[Outcome]:
        """:meth:`_write` ``outcomes``; if the database refuses a value
        (:func:`_refused_value`), each again in a transaction of its own, and one refused
        alone :meth:`_write_unstorable` (``result_unstorable``): the others keep their
        results, none goes back to the queue to be refused again."""
        try:
            return self._write(token, jobs, outcomes)
        except SQLAlchemyError as exc:
            if not _refused_value(exc):
                raise
            if len(outcomes) == 1:
                return self._write_unstorable(token, jobs, outcomes[0], exc)
            log.warning(
                "a commit of %d results was refused; one by one: %s", len(outcomes), _refusal(exc)
            )
            return [w for o in outcomes for w in self._write_apart(token, jobs, [o])]

    def _write_unstorable(
        self, token: uuid.UUID, jobs: Sequence[Job], outcome: Outcome, exc: SQLAlchemyError
    ) -> list[Outcome]:
        """Store ``outcome``'s job as failed (``result_unstorable``), with what its run
        cost: the database refused a value of its outcome with ``exc``."""
        message = f"the database refused its result: {_refusal(exc)}"
        log.warning("job %s: %s", outcome.job_id, message)
        unstorable = Outcome(
            job_id=outcome.job_id,
            status=JobStatus.FAILED,
            error_code=JobErrorCode.RESULT_UNSTORABLE,
            error_message=message.replace("\x00", "")[:MAX_ERROR_MESSAGE],
            output_tokens=outcome.output_tokens,
            model_revision=outcome.model_revision,
            batch_size=outcome.batch_size,
            inference_ms=outcome.inference_ms,
            queue_ms=outcome.queue_ms,
        )
        return self._write(token, jobs, [unstorable])

    def _write(
        self, token: uuid.UUID, jobs: Sequence[Job], outcomes: Sequence[Outcome]
    ) -> list[Outcome]:
        """Commit ``outcomes`` of jobs claimed under ``token`` in one transaction and
        wake the sender for them; returns those written (a job canceled or taken over
        meanwhile keeps its state). A transaction PostgreSQL aborts to break a deadlock
        (with the lease renewal, a cancel) is run again (``retrying_conflicts``)."""
        ids = {outcome.job_id for outcome in outcomes}
        mine = [job for job in jobs if job.id in ids]

        def commit() -> set[uuid.UUID]:
            with lifecycle.unit_of_work(
                self._sessions, lambda events: self._after_commit(mine, events), self._feed
            ) as changes:
                return set(lifecycle.finish(changes, token=token, outcomes=outcomes))

        written = retrying_conflicts(commit)
        return [outcome for outcome in outcomes if outcome.job_id in written]

    # -- shutdown --------------------------------------------------------------------

    def _drain(self, run: _Run) -> None:
        """Shutdown: claim nothing, give running rows ``drain_s`` to finish, then hand
        what is left (and suspects not yet run) back to the queue. Jobs being isolated
        keep the claim as an attempt (``lifecycle.release``): the culprit may be among
        them, and the next worker then runs each alone, as a suspect, instead of putting
        the culprit in a batch whose step it fails again."""
        deadline = self._clock() + self._settings.drain_s
        for job_id in self._engine.ahead:
            self._engine.abort(job_id)  # not started: handed back below at once
        while self._engine.running and self._clock() < deadline:
            self._abort_gone(run)
            if self._engine.running:
                self._step(run)
        left = [row.job for row in run.rows.values()] + run.suspects
        for job in left:
            self._engine.abort(job.id)
            self._publisher.forget(job.id)
        run.rows.clear()
        run.suspects.clear()
        if not left:
            return
        self._release(run.token, left, suspected=run.isolating)
        log.warning("shutting down: handed %d unfinished jobs back to the queue", len(left))
        self._requeue(left)

    def _release(
        self, token: uuid.UUID, jobs: Sequence[Job], *, suspected: Collection[uuid.UUID] = ()
    ) -> None:
        """Hand ``jobs`` claimed under ``token`` back to the queue (``lifecycle.release``,
        ``suspected`` as it says), run again if PostgreSQL aborts it to break a
        deadlock."""
        ids = [job.id for job in jobs]

        def hand_back() -> None:
            with lifecycle.unit_of_work(self._sessions, _no_events, self._feed) as changes:
                lifecycle.release(
                    changes, token=token, job_ids=ids, suspected=[i for i in ids if i in suspected]
                )

        retrying_conflicts(hand_back)

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


class _StoreFailed(Exception):
    """The blob store failed to give a claimed job's image (an outage: see
    :meth:`BatchService._hand_back_unread`)."""


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _no_events(events: list[str]) -> None:
    """The wake-up of moves that write no outbox events (claims, hand-backs)."""


def _refused_value(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` is the database (or the driver, or a column type) refusing a value
    written, as opposed to a lost connection or a conflict: the same rows would be
    refused again, so they are written one by one to find the culprit."""
    return isinstance(exc, DataError) or (
        isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
    )


def _refusal(exc: SQLAlchemyError) -> str:
    """What refused a value, without the statement and parameters SQLAlchemy adds (a
    result's whole text)."""
    cause = exc.orig if isinstance(exc, DBAPIError) else (exc.__cause__ or exc)
    return f"{type(cause).__name__}: {cause}"


def _policy(job: Job) -> Policy | None:
    """The policy ``job`` copied from its preset; ``None`` for a job without one."""
    return Policy.model_validate(job.policy) if job.policy else None


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
