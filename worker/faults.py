"""Fault injection for tests (``SIGHTLINE_FAULT_INJECTION=1``), never on by default.

Wraps a real backend; markers in a prompt make its forward pass misbehave the way real
ones do: ``[[oom]]`` raises like CUDA running out of memory, ``[[crash]]`` kills the
worker process outright (SIGKILL: no cleanup, no ack), ``[[slow]]`` makes the pass take
``SLOW_PASS_S`` longer so a test can act while a batch is running, and
``[[crash-after-commit]]`` kills it right after its results were committed, before the
webhook sender was woken (see :func:`crash_after_commit`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from shared.models import Job
from worker.batching import AfterCommit
from worker.model.base import BackendWrapper, GenerationRequest, GenerationResult

SLOW_PASS_S = 1.5


class SimulatedOutOfMemory(RuntimeError):
    """Raised in place of ``torch.OutOfMemoryError`` by a batch holding ``[[oom]]``."""


class FaultInjectingBackend(BackendWrapper):
    """A backend that obeys the fault markers, then delegates."""

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        prompts = [request.prompt for request in batch]
        if any("[[crash]]" in prompt for prompt in prompts):
            os.kill(os.getpid(), signal.SIGKILL)
        if any("[[oom]]" in prompt for prompt in prompts):
            raise SimulatedOutOfMemory(f"CUDA out of memory (simulated) in a batch of {len(batch)}")
        if any("[[slow]]" in prompt for prompt in prompts):
            time.sleep(SLOW_PASS_S)
        return self._backend.generate(batch)


def crash_after_commit(then: AfterCommit) -> AfterCommit:
    """Wrap an after-commit hook: SIGKILL this process first if a settled job's prompt
    holds ``[[crash-after-commit]]``, as if the worker died between commit and wake-up."""

    def hook(jobs: Sequence[Job], events: list[str]) -> None:
        if any("[[crash-after-commit]]" in job.prompt for job in jobs):
            os.kill(os.getpid(), signal.SIGKILL)
        then(jobs, events)

    return hook
