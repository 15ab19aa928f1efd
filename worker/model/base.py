"""The contract between the batch service and a model backend.

A backend knows how to turn a batch of (image, prompt, options) into text. It knows
nothing of Celery, the database or HTTP: the batch service hands it decoded images and
takes back plain results, so a backend can be tested, benchmarked and swapped alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    from worker.model.engine import Engine, EngineLimits


@dataclass(frozen=True)
class GenerationOptions:
    """Settings that must be equal for every request in one forward pass.

    ``max_new_tokens`` caps the generated tokens per request; ``temperature`` 0 means
    greedy decoding (deterministic), anything above samples.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One item of a batch: an RGB image, the user's prompt and its options.

    ``json_schema`` (a JSON Schema in the subset :func:`worker.model.structured.
    validate_schema` accepts) makes the answer a JSON document valid against it; requests
    in one batch may carry different schemas or none. ``thinking`` lets a model that
    reasons before answering (GLM-4.5V and later) do so; ``False`` passes the chat
    template's ``enable_thinking=False`` switch.
    """

    image: Image.Image
    prompt: str
    options: GenerationOptions
    json_schema: dict[str, Any] | None = None
    thinking: bool = False


@dataclass(frozen=True)
class GenerationResult:
    """What the model produced for one request.

    ``text`` is the decoded answer (for a schema'd request, the raw JSON text) and
    ``tokens`` the count of new tokens, reasoning included. ``reasoning`` is the
    ``<think>`` section, kept out of ``text``, or ``None`` where there was none. ``json``
    is the parsed answer for a request with a ``json_schema``, else ``None``.
    """

    text: str
    tokens: int
    reasoning: str | None = None
    json: Any = None


class ModelBackend(Protocol):
    """A vision-language model: a static batch in one ``generate`` call, or a
    continuous-batching engine (:meth:`start_engine`).

    ``load`` is called once per process before any work, with the torch device string
    (``"cpu"``, ``"cuda"``, ``"cuda:0"``); it raises if the checkpoint is missing or
    unsupported. ``generate`` takes requests that all share the same
    :class:`GenerationOptions` (it raises ``ValueError`` otherwise, and
    :class:`~worker.model.structured.SchemaError`, a ``ValueError``, for a schema outside
    the subset or too large for ``max_new_tokens``) and returns one result per request, in
    order. Any other exception from ``generate`` means the whole
    forward pass failed; the caller decides how to isolate the culprit.
    """

    @property
    def model_revision(self) -> str:
        """A short stable id of the loaded weights (part of the result cache's key)."""
        ...

    def load(self, device: str) -> None: ...

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def start_engine(self, limits: EngineLimits) -> Engine:
        """A continuous-batching :class:`~worker.model.engine.Engine` over the loaded
        model, holding at most ``limits``; what the worker runs jobs through."""
        ...
