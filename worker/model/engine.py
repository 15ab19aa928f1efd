"""The contract of a step-level (continuous-batching) engine.

An engine runs many requests at once and is driven one decoding step at a time: requests
join with :meth:`Engine.add` whenever there is room, every :meth:`Engine.step` gives each
running request one more token (a joining request is prefilled in that step and gets its
first token from it), and a request leaves the batch the step it finishes or when it is
aborted. Nothing forces requests to share options: each carries its own token cap,
temperature, schema and thinking switch. No Celery, no database: the worker feeds an
engine from its claims and commits what :class:`StepEvents` reports.

The protocol is shaped like vLLM's ``LLMEngine`` (``add_request`` / ``step`` /
``abort_request``), so another engine can implement it later.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from worker.model.base import GenerationRequest, GenerationResult


@dataclass(frozen=True)
class EngineLimits:
    """How much an engine may hold at once.

    ``max_rows`` requests in the batch (running or waiting for their prefill) and
    ``max_tokens`` tokens of padded KV cache: the batch's rows times its longest row,
    counting each row at its full length (prompt plus ``max_new_tokens``), so a batch
    admitted under the budget can never outgrow it. Beyond ``max_rows``, ``ahead_rows``
    requests may be added ahead: prefilled early, they wait for a row and take one
    while the batch holds fewer than ``ahead_seats`` rows (``max_rows`` when 0). They
    count against ``max_tokens`` from their prefill on.
    """

    max_rows: int
    max_tokens: int
    ahead_rows: int = 0
    ahead_seats: int = 0

    @property
    def seats_ahead(self) -> int:
        """The rows of the batch that requests added ahead may take."""
        return self.ahead_seats or self.max_rows


@dataclass
class StepEvents:
    """What one step did.

    ``tokens`` maps each request that got a token this step to that token's id;
    ``finished`` holds the requests that ended (a stop token or their ``max_new_tokens``)
    with their results; ``failed`` the requests that failed alone (a schema outside the
    subset, a prefill that raised with the request isolated) with the exception. Aborted
    requests appear nowhere. ``prefilled`` counts the requests that joined this step.
    """

    tokens: dict[uuid.UUID, int] = field(default_factory=dict)
    finished: dict[uuid.UUID, GenerationResult] = field(default_factory=dict)
    failed: dict[uuid.UUID, Exception] = field(default_factory=dict)
    prefilled: int = 0


class StepFailed(Exception):
    """A step raised outside a prefill pass (its decoding pass, or out of memory while
    rows were merged into the batch): every request in the engine when the step began,
    running or waiting, was dropped (the batch's state is no longer trustworthy) and is
    named in ``dropped``; none of the step's events counts; the engine is empty and the
    caller decides how to isolate the culprit. ``__cause__`` is what was raised."""

    def __init__(self, dropped: list[uuid.UUID], cause: Exception) -> None:
        super().__init__(f"a step over {len(dropped)} requests failed: {cause!r}")
        self.dropped = dropped


class Engine(Protocol):
    """A continuous-batching engine over one loaded model (see the module docstring).

    ``add`` raises ``ValueError`` if ``job_id`` is already in the engine or there is no
    free row; it does no model work (the prefill happens in the next :meth:`step`).
    ``step`` with nothing to do returns empty events. ``abort`` of an unknown id does
    nothing. ``text`` decodes the tokens a request generated so far, or in all for one
    that finished in the last step (for streaming); ``""`` for an unknown id.
    """

    @property
    def running(self) -> list[uuid.UUID]:
        """The requests in the engine, running or waiting for their prefill."""
        ...

    @property
    def ahead(self) -> list[uuid.UUID]:
        """The requests added ahead that have no row yet (prefilled or not)."""
        ...

    @property
    def free_rows(self) -> int:
        """How many more requests :meth:`add` accepts now to join the batch."""
        ...

    @property
    def free_ahead(self) -> int:
        """How many more requests :meth:`add` accepts now ahead (``ahead=True``)."""
        ...

    def add(
        self, job_id: uuid.UUID, request: GenerationRequest, *, ahead: bool = False
    ) -> None: ...

    def step(self) -> StepEvents: ...

    def abort(self, job_id: uuid.UUID) -> None: ...

    def text(self, job_id: uuid.UUID) -> str: ...
