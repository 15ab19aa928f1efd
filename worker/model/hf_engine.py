"""Continuous batching on a ``transformers`` GLM-4V model: rows join and leave per step.

The batch is one padded KV cache (a ``DynamicCache``, layers ``[rows, kv_heads, length,
head_dim]``), a 2-D attention mask of the same length that marks each row's left padding,
and per row its next M-RoPE position, its last token and its decoding state. The
technique is the one TGI used for plain Hugging Face models (``CausalLMBatch.filter`` /
``concatenate``):

- **join**: requests added since the last step are prefilled together in their own
  left-padded forward pass (vision encoder and prompt) with explicit 3-axis positions from
  ``get_rope_index``; their caches are left-padded to the batch's length (or the batch's
  to theirs) and concatenated on the row axis;
- **decode**: one forward pass over every running row with its last token, its own
  position (``[3, rows, 1]``: the row's real token count plus its own M-RoPE delta; the
  model's single module-level ``rope_deltas`` is never used) and the mask with one
  column appended;
- **leave**: a finished or aborted row is index-selected out of cache, mask and
  positions, and columns that are padding in every remaining row are trimmed.

Each row picks its own token: its JSON-schema constraint (:class:`~worker.model.
structured.RowConstraint`) masks its scores, then temperature 0 takes the argmax and
anything above samples (with the checkpoint's ``top_k``/``top_p``). In float32 greedy a
row's tokens are the same as the request run alone through ``generate``, whatever joins
or leaves around it (``tests/unit/test_engine.py``).

Still static: a prefill runs whole (no chunking) and pauses the decoding rows for its
duration; the cache is padded, not paged, so memory is rows times the longest row
(bounded by :class:`~worker.model.engine.EngineLimits`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.model.base import GenerationRequest
from worker.model.engine import EngineLimits, StepEvents, StepFailed
from worker.model.structured import RowConstraint

if TYPE_CHECKING:
    from worker.model.hf import TransformersBackend


@dataclass
class _Row:
    job_id: uuid.UUID
    request: GenerationRequest
    inputs: dict[str, Any]
    constraint: RowConstraint | None
    generated: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def full_length(self) -> int:
        """The most cache this row can ever need: its prompt plus every new token."""
        return self.prompt_tokens + self.request.options.max_new_tokens


class BudgetExceeded(ValueError):
    """A request that alone needs more KV cache than the engine's token budget."""


class TransformersEngine:
    """An :class:`~worker.model.engine.Engine` over a loaded :class:`TransformersBackend`.

    Rows wait after :meth:`add` until the next :meth:`step` admits them: oldest first,
    while the batch stays within ``limits`` (a row that would overflow the token budget
    waits for rows to leave; one that could never fit fails with
    :class:`BudgetExceeded`).
    """

    def __init__(self, backend: TransformersBackend, limits: EngineLimits) -> None:
        import torch

        self._torch = torch
        self._backend = backend
        self._model: Any = backend.model
        self._limits = limits
        self._waiting: list[_Row] = []
        self._rows: list[_Row] = []
        # Rows that finished in the last step, so their final text is still readable.
        self._finished: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None
        self._positions: Any = None
        self._last: Any = None
        config = self._model.generation_config
        self._top_k = int(config.top_k or 0)
        self._top_p = float(config.top_p if config.top_p is not None else 1.0)

    @property
    def running(self) -> list[uuid.UUID]:
        return [row.job_id for row in (*self._rows, *self._waiting)]

    @property
    def free_rows(self) -> int:
        return self._limits.max_rows - len(self._rows) - len(self._waiting)

    def add(self, job_id: uuid.UUID, request: GenerationRequest) -> None:
        """Queue ``request`` for the next step's prefill. Tokenises the prompt and
        prepares the image here (CPU work); raises ``ValueError`` for a duplicate id or
        a full engine, :class:`~worker.model.structured.SchemaError` for a schema outside
        the subset or too big for the request's ``max_new_tokens``."""
        if job_id in self.running:
            raise ValueError(f"request {job_id} is already in the engine")
        if self.free_rows <= 0:
            raise ValueError("the engine has no free row")
        constraint = self._backend.constraint(request)
        self._waiting.append(_Row(job_id, request, self._backend.encode(request), constraint))

    def abort(self, job_id: uuid.UUID) -> None:
        self._waiting = [row for row in self._waiting if row.job_id != job_id]
        keep = [index for index, row in enumerate(self._rows) if row.job_id != job_id]
        if len(keep) < len(self._rows):
            self._keep(keep)

    def text(self, job_id: uuid.UUID) -> str:
        rows = (*self._rows, *self._waiting, *self._finished)
        row = next((r for r in rows if r.job_id == job_id), None)
        return "" if row is None else self._backend.decode(row.generated)

    def step(self) -> StepEvents:
        """Decode one token for every running row, then prefill the rows that fit and
        give them their first token. Raises :class:`StepFailed` (after dropping every
        running row) if the decoding pass raises; a prefill that raises fails its rows
        (one at a time, so only the culprit fails: see :meth:`_prefill_isolated`)."""
        events = StepEvents()
        self._finished = []
        with self._torch.inference_mode():
            if self._rows:
                self._decode(events)
            admitted = self._admit(events)
            if admitted:
                self._prefill_isolated(admitted, events)
        return events

    # -- admission -------------------------------------------------------------------

    def _admit(self, events: StepEvents) -> list[_Row]:
        """The waiting rows that fit now, oldest first; fail the ones that never can."""
        admitted: list[_Row] = []
        budget = self._limits.max_tokens
        longest = max((row.full_length for row in self._rows), default=0)
        count = len(self._rows)
        for row in list(self._waiting):
            if row.full_length > budget:
                self._waiting.remove(row)
                events.failed[row.job_id] = BudgetExceeded(
                    f"the request needs {row.full_length} tokens of KV cache (prompt "
                    f"{row.prompt_tokens} + max_new_tokens {row.request.options.max_new_tokens}),"
                    f" more than the worker's budget of {budget}"
                )
                continue
            if (count + 1) * max(longest, row.full_length) > budget:
                break  # oldest first: later rows wait too, so this one is not starved
            longest = max(longest, row.full_length)
            count += 1
            admitted.append(row)
            self._waiting.remove(row)
        return admitted

    # -- prefill ---------------------------------------------------------------------

    def _prefill_isolated(self, rows: list[_Row], events: StepEvents) -> None:
        """Prefill ``rows`` in one pass; if it raises, retry each row alone so that only
        the culprit fails (a prefill touches no running row, so nothing else is lost)."""
        try:
            self._prefill(rows, events)
        except Exception as exc:
            if len(rows) == 1:
                events.failed[rows[0].job_id] = exc
                return
            for row in rows:
                self._prefill_isolated([row], events)

    def _prefill(self, rows: list[_Row], events: StepEvents) -> None:
        torch = self._torch
        inputs = self._backend.collate([row.inputs for row in rows])
        model = self._model
        positions, deltas = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs["attention_mask"],
        )
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        output = model(
            **inputs,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        mask = inputs["attention_mask"]
        next_positions = mask.sum(-1) + deltas.view(-1).to(mask.device)
        tokens = self._choose(rows, output.logits[:, -1, :])
        events.prefilled += len(rows)
        self._merge(rows, cache, mask, next_positions, torch.tensor(tokens, device=mask.device))
        self._record(tokens, events, first=len(self._rows) - len(rows))

    def _merge(self, rows: list[_Row], cache: Any, mask: Any, positions: Any, last: Any) -> None:
        """Append prefilled ``rows`` to the batch, left-padding the shorter side."""
        torch = self._torch
        if not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
            self._positions, self._last = positions, last
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([left_pad(old.keys, length, 2), left_pad(new.keys, length, 2)])
            old.values = torch.cat(
                [left_pad(old.values, length, 2), left_pad(new.values, length, 2)]
            )
        self._mask = torch.cat([left_pad(self._mask, length, 1), left_pad(mask, length, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, last])
        self._rows += rows

    # -- decode ----------------------------------------------------------------------

    def _decode(self, events: StepEvents) -> None:
        torch = self._torch
        count = len(self._rows)
        mask = torch.cat([self._mask, self._mask.new_ones((count, 1))], dim=1)
        try:
            output = self._model(
                input_ids=self._last.view(count, 1),
                attention_mask=mask,
                position_ids=self._positions.view(1, count, 1).expand(3, count, 1),
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
            tokens = self._choose(self._rows, output.logits[:, -1, :])
        except Exception as exc:
            dropped = self.running
            self._keep([])
            self._waiting = []
            raise StepFailed(dropped, exc) from exc
        self._mask = mask
        self._positions = self._positions + 1
        self._last = torch.tensor(tokens, device=mask.device)
        self._record(tokens, events, first=0)

    def _choose(self, rows: list[_Row], logits: Any) -> list[int]:
        """Each row's next token: its constraint masks its scores, then greedy or
        sampled at its own temperature."""
        torch = self._torch
        scores = logits.float()
        chosen = scores.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            temperature = row.request.options.temperature
            if row.constraint is None and temperature <= 0:
                continue
            row_scores = scores[index]
            if row.constraint is not None:
                remaining = row.request.options.max_new_tokens - len(row.generated)
                row.constraint.mask(row_scores, remaining)
            if temperature <= 0:
                chosen[index] = int(row_scores.argmax())
                continue
            probs = torch.softmax(self._filtered(row_scores / temperature), dim=-1)
            chosen[index] = int(torch.multinomial(probs, 1))
        for row, token in zip(rows, chosen, strict=True):
            if row.constraint is not None:
                row.constraint.accept(token)
        return [int(token) for token in chosen]

    def _filtered(self, scores: Any) -> Any:
        """The checkpoint's ``top_k`` then ``top_p`` filters, as ``generate`` samples."""
        torch = self._torch
        if 0 < self._top_k < scores.shape[-1]:
            floor = torch.topk(scores, self._top_k).values[-1]
            scores = scores.masked_fill(scores < floor, -float("inf"))
        if self._top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) > self._top_p
            scores = scores.masked_fill(drop.scatter(0, order, drop), -float("inf"))
        return scores

    def _record(self, tokens: list[int], events: StepEvents, *, first: int) -> None:
        """Append the chosen tokens to rows ``first…`` and let finished rows leave."""
        stop_ids = self._backend.stop_ids
        keep: list[int] = list(range(first))
        for index, token in enumerate(tokens, start=first):
            row = self._rows[index]
            row.generated.append(token)
            events.tokens[row.job_id] = token
            done = token in stop_ids or len(row.generated) >= row.request.options.max_new_tokens
            if not done:
                keep.append(index)
                continue
            self._finished.append(row)
            try:
                events.finished[row.job_id] = self._backend.result(
                    row.generated, row.request.json_schema is not None
                )
            except Exception as exc:
                events.failed[row.job_id] = exc
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices``; trim columns that are padding in all."""
        if not indices:
            self._rows, self._cache, self._mask = [], None, None
            self._positions = self._last = None
            return
        torch = self._torch
        select = torch.tensor(indices, device=self._mask.device)
        mask = self._mask.index_select(0, select)
        real = mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else mask.shape[1]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, select)[:, :, start:]
            layer.values = layer.values.index_select(0, select)[:, :, start:]
        self._mask = mask[:, start:]
        self._positions = self._positions.index_select(0, select)
        self._last = self._last.index_select(0, select)
        self._rows = [self._rows[index] for index in indices]


def left_pad(tensor: Any, length: int, dim: int, value: int = 0) -> Any:
    """``tensor`` left-padded with ``value`` along ``dim`` to ``length``."""
    import torch

    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)
