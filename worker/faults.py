"""Fault injection for tests (``SIGHTLINE_FAULT_INJECTION=1``), never on by default.

Wraps a real engine; markers in a prompt make every step that holds the request misbehave
the way real ones do: ``[[oom]]`` raises like CUDA running out of memory (the engine
drops its batch, as a real failed step does), ``[[oom-escapes]]`` raises the same error
out of the step as it is, with the engine's rows left in place (as an engine that does
not catch an error of its own would; the transformers engine turns every error of a
step into a dropped batch), ``[[crash]]``
kills the worker process outright (SIGKILL: no cleanup, no ack), ``[[slow]]`` makes the
step take ``SLOW_STEP_S`` longer so a test can act while a job is running,
``[[prepare-fails]]`` makes :meth:`~worker.model.engine.Engine.add` raise (as an
engine that refuses a request would: a schema outside the subset), ``[[unstorable]]``
puts a NUL in the request's finished text, a value PostgreSQL refuses, so committing
its result fails (the backend keeps NUL out of real text:
``worker.model.hf.NUL_STANDIN``), and
``[[crash-after-commit]]`` kills it right after its results were committed, before the
webhook sender was woken (see :func:`crash_after_commit`).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

from shared.models import Job
from worker.batching import AfterCommit
from worker.model.base import GenerationRequest
from worker.model.engine import Engine, StepEvents, StepFailed

SLOW_STEP_S = 0.5


class SimulatedOutOfMemory(RuntimeError):
    """Raised in place of ``torch.OutOfMemoryError`` by a step holding ``[[oom]]``."""


class SimulatedPrepareError(RuntimeError):
    """Raised by :meth:`FaultInjectingEngine.add` for a request holding
    ``[[prepare-fails]]``."""


class FaultInjectingEngine:
    """An :class:`~worker.model.engine.Engine` that obeys the fault markers, then
    delegates."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._prompts: dict[uuid.UUID, str] = {}

    @property
    def running(self) -> list[uuid.UUID]:
        return self._engine.running

    @property
    def ahead(self) -> list[uuid.UUID]:
        return self._engine.ahead

    @property
    def free_rows(self) -> int:
        return self._engine.free_rows

    @property
    def free_ahead(self) -> int:
        return self._engine.free_ahead

    def add(self, job_id: uuid.UUID, request: GenerationRequest, *, ahead: bool = False) -> None:
        if "[[prepare-fails]]" in request.prompt:
            raise SimulatedPrepareError("the processor failed on this request (simulated)")
        self._engine.add(job_id, request, ahead=ahead)
        self._prompts[job_id] = request.prompt

    def abort(self, job_id: uuid.UUID) -> None:
        self._engine.abort(job_id)

    def text(self, job_id: uuid.UUID) -> str:
        return self._engine.text(job_id)

    def step(self) -> StepEvents:
        running = self._engine.running
        self._prompts = {job_id: self._prompts[job_id] for job_id in running}
        prompts = self._prompts.values()
        if any("[[crash]]" in prompt for prompt in prompts):
            os.kill(os.getpid(), signal.SIGKILL)
        if any("[[oom]]" in prompt for prompt in prompts):
            for job_id in running:
                self._engine.abort(job_id)
            cause = SimulatedOutOfMemory(
                f"CUDA out of memory (simulated) in a step of {len(running)} rows"
            )
            raise StepFailed(running, cause) from cause
        if any("[[oom-escapes]]" in prompt for prompt in prompts):
            raise SimulatedOutOfMemory(
                f"CUDA out of memory (simulated, uncaught), {len(running)} rows"
            )
        if any("[[slow]]" in prompt for prompt in prompts):
            time.sleep(SLOW_STEP_S)
        events = self._engine.step()
        for job_id, result in events.finished.items():
            if "[[unstorable]]" in self._prompts.get(job_id, ""):
                events.finished[job_id] = replace(result, text=f"{result.text}\x00")
        return events


def crash_after_commit(then: AfterCommit) -> AfterCommit:
    """Wrap an after-commit hook: SIGKILL this process first if a settled job's prompt
    holds ``[[crash-after-commit]]``, as if the worker died between commit and wake-up."""

    def hook(jobs: Sequence[Job], events: list[str]) -> None:
        if any("[[crash-after-commit]]" in job.prompt for job in jobs):
            os.kill(os.getpid(), signal.SIGKILL)
        then(jobs, events)

    return hook
