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

Requests **added ahead** (``add(..., ahead=True)``) are prefilled with the next step's
joiners but wait, prefilled, in a second padded batch of the same kind (the *staged*
rows) until the batch has a row for them (fewer rows than ``EngineLimits.seats_ahead``):
they join at the step a row frees, without a prefill pass of their own. So a caller can
prefill several requests in one pass before rows free one at a time (one pass of eight
costs about half as much per request as eight passes of one: ``docs/benchmarks.md``).

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

import copy
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
    constraint: RowConstraint | None
    inputs: dict[str, Any] = field(default_factory=dict)  # encoded at its first step
    ahead: bool = False
    generated: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def full_length(self) -> int:
        """The most cache this row can ever need: its prompt plus every new token."""
        return self.prompt_tokens + self.request.options.max_new_tokens


class _Batch:
    """Prefilled rows that share one padded KV cache (``cache``: a ``DynamicCache``),
    the 2-D attention mask marking each row's left padding, and per row its next M-RoPE
    position and its last token."""

    def __init__(self, rows: list[_Row], cache: Any, mask: Any, positions: Any, last: Any):
        self.rows = rows
        self.cache = cache
        self.mask = mask
        self.positions = positions
        self.last = last

    def __len__(self) -> int:
        return len(self.rows)

    def extend(self, other: _Batch) -> None:
        """Append ``other``'s rows, left-padding the shorter side."""
        import torch

        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [left_pad(mine.keys, length, 2), left_pad(theirs.keys, length, 2)]
            )
            mine.values = torch.cat(
                [left_pad(mine.values, length, 2), left_pad(theirs.values, length, 2)]
            )
        self.mask = torch.cat([left_pad(self.mask, length, 1), left_pad(other.mask, length, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows

    def select(self, indices: list[int] | slice) -> _Batch | None:
        """The rows at ``indices`` as a batch of their own (``None`` for no rows),
        without the columns that are padding in all of them; ``self`` is unchanged. A
        ``slice`` takes views of ``self``'s tensors, a list copies them."""
        import torch

        if isinstance(indices, slice):
            rows = self.rows[indices]

            def pick(tensor: Any) -> Any:
                return tensor[indices]
        else:
            rows = [self.rows[i] for i in indices]
            index = torch.tensor(indices, device=self.mask.device)

            def pick(tensor: Any) -> Any:
                return tensor.index_select(0, index)

        if not rows:
            return None
        mask = pick(self.mask)
        real = mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else mask.shape[1]
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        for layer in cache.layers:
            layer.keys = pick(layer.keys)[:, :, start:]
            layer.values = pick(layer.values)[:, :, start:]
        return _Batch(rows, cache, mask[:, start:], pick(self.positions), pick(self.last))


def _rows(batch: _Batch | None) -> list[_Row]:
    return batch.rows if batch is not None else []


def _joined(batch: _Batch | None, other: _Batch | None) -> _Batch | None:
    """``batch`` with ``other``'s rows appended (either may be ``None``)."""
    if batch is None or other is None:
        return batch or other
    batch.extend(other)
    return batch


def _kept(batch: _Batch | None, keep: list[int]) -> _Batch | None:
    """``batch`` with only the rows at ``keep`` (itself when that is every row)."""
    if batch is None or len(keep) == len(batch):
        return batch
    return batch.select(keep)


class BudgetExceeded(ValueError):
    """A request that alone needs more KV cache than the engine's token budget."""


class TransformersEngine:
    """An :class:`~worker.model.engine.Engine` over a loaded :class:`TransformersBackend`.

    Rows wait after :meth:`add` until the next :meth:`step` admits them: oldest first,
    requests added ahead after the others, while the batch and the staged rows together
    stay within ``limits`` (a row that would overflow the token budget waits for rows
    to leave; one that could never fit fails with :class:`BudgetExceeded`).
    """

    def __init__(self, backend: TransformersBackend, limits: EngineLimits) -> None:
        import torch

        self._torch = torch
        self._backend = backend
        self._model: Any = backend.model
        self._limits = limits
        self._waiting: list[_Row] = []
        self._batch: _Batch | None = None
        self._staged: _Batch | None = None  # prefilled rows added ahead, waiting for a row
        # Rows that finished in the last step, so their final text is still readable.
        self._finished: list[_Row] = []
        config = self._model.generation_config
        self._top_k = int(config.top_k or 0)
        self._top_p = float(config.top_p if config.top_p is not None else 1.0)

    @property
    def running(self) -> list[uuid.UUID]:
        return [row.job_id for row in self._all_rows()]

    @property
    def ahead(self) -> list[uuid.UUID]:
        return [row.job_id for row in (*_rows(self._staged), *self._waiting) if row.ahead]

    @property
    def free_rows(self) -> int:
        return self._limits.max_rows - len(self._batch or ()) - self._joining() - self._seatable()

    @property
    def free_ahead(self) -> int:
        return self._limits.ahead_rows - len(self.ahead)

    def add(self, job_id: uuid.UUID, request: GenerationRequest, *, ahead: bool = False) -> None:
        """Queue ``request`` for the next step's prefill; with ``ahead``, to wait
        prefilled for a row. Its prompt and image are encoded in that step, with the
        other requests added since the last one (one processor call for all); raises
        ``ValueError`` for a duplicate id or a full engine,
        :class:`~worker.model.structured.SchemaError` for a schema outside the subset or
        too big for the request's ``max_new_tokens``."""
        if job_id in self.running:
            raise ValueError(f"request {job_id} is already in the engine")
        if (self.free_ahead if ahead else self.free_rows) <= 0:
            raise ValueError("the engine has no free row" + (" ahead" if ahead else ""))
        constraint = self._backend.constraint(request)
        self._waiting.append(_Row(job_id, request, constraint, ahead=ahead))

    def abort(self, job_id: uuid.UUID) -> None:
        self._waiting = [row for row in self._waiting if row.job_id != job_id]
        self._batch = self._without(self._batch, job_id)
        self._staged = self._without(self._staged, job_id)

    def text(self, job_id: uuid.UUID) -> str:
        row = next((r for r in (*self._all_rows(), *self._finished) if r.job_id == job_id), None)
        return "" if row is None else self._backend.decode(row.generated)

    def step(self) -> StepEvents:
        """Decode one token for every running row, give free rows to staged rows, then
        prefill the waiting rows that fit and give them their first token. A prefill
        pass that raises fails its rows (one at a time, so only the culprit fails: see
        :meth:`_prefill_isolated`). Anything else that raises (the decoding pass; out of
        memory while rows are merged into the batch, which leaves its tensors
        half-built) raises :class:`StepFailed` naming every request that was in the
        engine when the step began, the engine emptied: none of this step's events is
        kept, so a request is never left with a token recorded twice."""
        events = StepEvents()
        self._finished = []
        before = self.running
        try:
            with self._torch.inference_mode():
                if self._batch:
                    self._decode(events)
                self._seat_staged()
                self._encode_waiting(events)
                admitted = self._admit(events)
                if admitted:
                    self._prefill_isolated(admitted, events)
                    self._seat_staged()
        except Exception as exc:
            self._batch = self._staged = None
            self._waiting, self._finished = [], []
            raise StepFailed(before, exc) from exc
        return events

    def _joining(self) -> int:
        """Waiting rows that take a row of the batch at their prefill (not added ahead)."""
        return sum(1 for row in self._waiting if not row.ahead)

    def _seatable(self) -> int:
        """Staged rows that take a row of the batch at the next step (below
        ``EngineLimits.seats_ahead``): the rows they take are not free for others."""
        if self._staged is None:
            return 0
        return min(len(self._staged), max(0, self._limits.seats_ahead - len(self._batch or ())))

    def _all_rows(self) -> list[_Row]:
        return [*_rows(self._batch), *_rows(self._staged), *self._waiting]

    @staticmethod
    def _without(batch: _Batch | None, job_id: uuid.UUID) -> _Batch | None:
        if batch is None:
            return None
        return _kept(batch, [i for i, row in enumerate(batch.rows) if row.job_id != job_id])

    # -- admission -------------------------------------------------------------------

    def _encode_waiting(self, events: StepEvents) -> None:
        """Encode the waiting rows added since the last step, in one call; if it raises,
        each alone, and a row that fails alone fails (a prompt or image the processor
        refuses touches no other row)."""
        fresh = [row for row in self._waiting if not row.inputs]
        if not fresh:
            return
        try:
            encoded = self._backend.encode([row.request for row in fresh])
        except Exception:
            for row in fresh:
                try:
                    row.inputs = self._backend.encode([row.request])[0]
                except Exception as exc:
                    self._waiting.remove(row)
                    events.failed[row.job_id] = exc
            return
        for row, inputs in zip(fresh, encoded, strict=True):
            row.inputs = inputs

    def _admit(self, events: StepEvents) -> list[_Row]:
        """The waiting rows that fit now, oldest first and rows added ahead last; fail
        the ones that never can. Staged rows count as rows of the batch."""
        admitted: list[_Row] = []
        budget = self._limits.max_tokens
        holding = [*_rows(self._batch), *_rows(self._staged)]
        longest = max((row.full_length for row in holding), default=0)
        count = len(holding)
        for row in sorted(self._waiting, key=lambda row: row.ahead):
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

    def _seat_staged(self) -> None:
        """Move staged rows, oldest first, into the batch's free rows: below
        ``EngineLimits.seats_ahead`` rows (:attr:`free_rows` keeps those rows for them)."""
        seats = self._seatable()
        if seats <= 0:
            return
        assert self._staged is not None
        moving = self._staged.select(slice(0, seats))  # views: extend copies them once
        # The rest copied: views would keep the seated rows' cache alive beside the
        # batch's copy, past the token budget, until the last staged row is seated.
        self._staged = self._staged.select(list(range(seats, len(self._staged))))
        self._batch = _joined(self._batch, moving)

    # -- prefill ---------------------------------------------------------------------

    def _prefill_isolated(self, rows: list[_Row], events: StepEvents) -> None:
        """Prefill ``rows`` in one pass; if the pass raises, retry each row alone so
        that only the culprit fails (the pass touches no state of the engine, so nothing
        else is lost); then give them their first tokens and merge them into the batch
        (or the staged rows)."""
        try:
            prefilled, logits = self._prefill(rows)
        except Exception as exc:
            if len(rows) == 1:
                events.failed[rows[0].job_id] = exc
                return
            for row in rows:
                self._prefill_isolated([row], events)
            return
        self._join_prefilled(prefilled, logits, events)

    def _prefill(self, rows: list[_Row]) -> tuple[_Batch, Any]:
        """One forward pass over ``rows`` alone: their batch (its last tokens not chosen
        yet) and the logits of their next token."""
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
        return _Batch(list(rows), cache, mask, next_positions, None), output.logits[:, -1, :]

    def _join_prefilled(self, prefilled: _Batch, logits: Any, events: StepEvents) -> None:
        """Choose the first tokens of freshly prefilled rows and merge those that go on
        into the batch, or the staged rows for rows added ahead."""
        tokens = self._choose(prefilled.rows, logits)
        events.prefilled += len(prefilled)
        prefilled.last = self._torch.tensor(tokens, device=prefilled.mask.device)
        joined = self._record(prefilled, tokens, events)
        if joined is None:
            return
        now = [i for i, row in enumerate(joined.rows) if not row.ahead]
        later = [i for i, row in enumerate(joined.rows) if row.ahead]
        self._batch = _joined(self._batch, _kept(joined, now) if now else None)
        self._staged = _joined(self._staged, _kept(joined, later) if later else None)

    # -- decode ----------------------------------------------------------------------

    def _decode(self, events: StepEvents) -> None:
        torch = self._torch
        batch = self._batch
        assert batch is not None
        count = len(batch)
        mask = torch.cat([batch.mask, batch.mask.new_ones((count, 1))], dim=1)
        output = self._model(
            input_ids=batch.last.view(count, 1),
            attention_mask=mask,
            position_ids=batch.positions.view(1, count, 1).expand(3, count, 1),
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = self._choose(batch.rows, output.logits[:, -1, :])
        batch.mask = mask
        batch.positions = batch.positions + 1
        batch.last = torch.tensor(tokens, device=mask.device)
        self._batch = self._record(batch, tokens, events)

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

    def _record(self, batch: _Batch, tokens: list[int], events: StepEvents) -> _Batch | None:
        """Append the chosen tokens to ``batch``'s rows; the batch without the rows that
        finished."""
        stop_ids = self._backend.stop_ids
        keep: list[int] = []
        for index, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
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
        return _kept(batch, keep) if keep else None


def left_pad(tensor: Any, length: int, dim: int, value: int = 0) -> Any:
    """``tensor`` left-padded with ``value`` along ``dim`` to ``length``."""
    import torch

    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)
