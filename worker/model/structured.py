"""JSON-schema constrained decoding and thinking sections, for batched ``generate``.

Each request of a batch may carry its own JSON Schema (or none). :class:`StructuredDecoder`
turns those into one ``transformers`` logits processor that masks, row by row, every token
the row's grammar forbids; rows without a schema are never touched, so their greedy text is
the same as in a batch without constrained neighbours.

Library choice
==============

Compared for this job (CPU-only Python 3.11, ``torch==2.14.1``, mixed schemas per batch):

* **xgrammar** (0.2.8, MLC/CMU; the default structured-output engine of vLLM, SGLang and
  TensorRT-LLM). One ``GrammarMatcher`` per sequence and a packed ``int32`` bitmask per
  batch, so every row follows its own compiled grammar; the mask of one row is computed in
  C++ in microseconds (a pushdown automaton with a token-mask cache built at compile time)
  and applied in place. Compiled grammars are cached per schema. Supports the whole subset
  we accept, including ``maxLength``, ``maxItems`` and numeric ``minimum``/``maximum``.
  Installs as two wheels (``xgrammar``, ``apache-tvm-ffi``, about 5 MB); its ``torch`` and
  ``triton`` requirements are already satisfied by our pinned torch, nothing is upgraded.
  Released every few weeks.
* **llguidance** (1.9, Microsoft; behind Guidance and llama.cpp's JSON mode). Equally fast
  (Rust, lazy lexer-plus-Earley), per-row matchers and bitmasks too, one small wheel with no
  dependencies. A sound alternative; xgrammar won on its first-class ``transformers`` and
  torch bitmask helpers and its wider use in the serving engines we would move to on GPU.
* **outlines** (1.3) compiles a schema to a regex-derived index (``outlines_core``, Rust).
  Its ``transformers`` integration applies one output type to a whole ``generate`` call, so
  mixed schemas in one batch would need our own processor over ``outlines_core`` anyway;
  index construction is slow for large vocabularies and bounded strings, and it pulls in ten
  packages (jsonschema, diskcache, cloudpickle, genson, ...).
* **lm-format-enforcer** (0.11) is pure Python behind ``prefix_allowed_tokens_fn``, which is
  per row, but walks the token trie in Python on every step: tens of milliseconds per row
  per step on a 150k vocabulary, far beyond the 15 % budget. Small install (with
  ``interegular``), maintained by one person.

Chosen: **xgrammar**.

Why every constrained answer parses
===================================

A grammar alone only promises that the text is a *prefix* of a valid document: a random
model happily writes a string until ``max_new_tokens`` runs out. So each constrained row
keeps a *closing reserve* ``R`` (:func:`closing_reserve`): an upper bound, in bytes, of how
much text can still be needed to finish the document from any point when the row is steered
straight to the end, plus one token for the stop token. While more than ``R`` tokens remain
the row follows its grammar freely. From then on it is in *closing mode*: among the tokens
the grammar allows it may only take, in this order of preference, a stop token or ``"``;
else ``}`` or ``]``; else ``,``; else any single-byte token. (``"`` comes first because
inside a string ``}`` and ``]`` are mere characters.) Closing mode therefore ends a string
at the next character, opens at most one more item per array and each property at most
once, leaves only bounded literals (enum values, numbers, ``true``/``false``, keys) to
finish, and spends exactly one byte per token, so the document and its stop token fit into
the ``R`` tokens left. Byte-level vocabularies (GLM's, and the tiny checkpoint's) hold every
single byte as a token; where one lacks a needed byte the row falls back to its plain
grammar mask, and :class:`_JsonLogitsProcessor` fails the batch rather than return
invalid JSON if the grammar is ever left.

The bound ``R`` counts every property (optional ones too) with its closing-mode cost: a key
and its separators, an enum's longest literal, a number's longest literal under its bounds
(xgrammar writes range-bounded numbers with at most six fraction digits), ``false``, empty
strings plus a partly written escape, empty arrays plus one item in progress. A request
whose ``max_new_tokens`` is below :func:`min_new_tokens` is refused with
:class:`SchemaError` before any forward pass (the API can check the same at submission).

The grammar has no free whitespace (separators ``,`` and ``:``), is strict (no properties
beyond the schema's) and never matches a token that is an added/special token or contains a
control byte, so the raw text is strict JSON that ``json.loads`` accepts.

Thinking
========

With ``thinking`` on and a schema, the row must first open ``<think>``, may reason freely
(stop tokens are masked) and is made to close ``</think>`` when ``R + 1`` tokens remain;
the JSON grammar applies from then on. :func:`split_reasoning` separates the two parts
after decoding, for every request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.json_schema import THINKING_TOKENS, SchemaError, closing_reserve, validate_schema


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split decoded output into ``(reasoning, answer)``.

    The reasoning is what lies between ``<think>`` and the first ``</think>`` (the opening
    tag may be missing where the prompt already opened it), stripped of surrounding
    whitespace; the answer is what follows, stripped likewise. An opened section never
    closed (the token budget ran out while thinking) is all reasoning with an empty answer.
    Text without a thinking section is returned whole as the answer, reasoning ``None``.
    """
    opening, closing = "<think>", "</think>"
    head, found, tail = text.partition(closing)
    if found:
        reasoning = head.lstrip()
        reasoning = reasoning.removeprefix(opening)
        return reasoning.strip(), tail.strip()
    if text.lstrip().startswith(opening):
        return text.lstrip().removeprefix(opening).strip(), ""
    return None, text


@dataclass(frozen=True)
class RowSpec:
    """How one batch row is constrained: its schema (``None`` leaves the row free) and
    whether it thinks first."""

    schema: Mapping[str, Any] | None
    thinking: bool


class StructuredDecoder:
    """Per-tokenizer state for constrained decoding: vocabulary info and compiled grammars.

    Built once per loaded model; :meth:`processor` makes the logits processor for one
    ``generate`` call. ``tokenizer`` is the Hugging Face tokenizer, ``vocab_size`` the width
    of the model's logits, ``stop_ids`` the ids that end a sequence. Grammars are compiled
    on first use of a schema and cached (xgrammar's compiler cache, keyed by the schema
    text). Importing xgrammar happens here, not at module import.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: frozenset[int]) -> None:
        import torch
        import xgrammar as xgr

        if not stop_ids:
            raise SchemaError("the checkpoint defines no stop token; JSON output cannot end")
        detected = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids)
        )
        vocab = list(detected.decoded_vocab)[:vocab_size]
        vocab += [b""] * (vocab_size - len(vocab))
        # An empty entry is never matched by a grammar: that keeps added tokens (image
        # placeholders, <think>, role markers) and raw control bytes, which strict JSON
        # refuses inside strings, out of every answer.
        added = set(tokenizer.added_tokens_decoder)
        matchable = [
            b"" if index in added or any(byte < 0x20 for byte in token) else token
            for index, token in enumerate(vocab)
        ]
        self._info = xgr.TokenizerInfo(
            matchable,
            xgr.VocabType.RAW,
            vocab_size=vocab_size,
            stop_token_ids=sorted(stop_ids),
        )
        self._compiler = xgr.GrammarCompiler(self._info, cache_enabled=True)
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        self.think_ids = _think_ids(tokenizer)

        def packed(ids: Sequence[int]) -> Any:
            mask = torch.zeros(math.ceil(vocab_size / 32) * 32, dtype=torch.bool)
            mask[list(ids)] = True
            return _pack(mask)

        def single(char: bytes) -> list[int]:
            return [i for i, token in enumerate(matchable) if token == char]

        # Closing-mode preference, best first (see the module docstring).
        self._closing_groups = [
            packed([*stop_ids, *single(b'"')]),
            packed([*single(b"}"), *single(b"]")]),
            packed(single(b",")),
            packed([i for i, token in enumerate(matchable) if len(token) == 1]),
        ]

    def compile(self, schema: Mapping[str, Any]) -> Any:
        """The compiled grammar for ``schema`` (cached); :class:`SchemaError` if unsupported."""
        validate_schema(schema)
        return self._compiler.compile_json_schema(
            # Key order is kept: the grammar emits properties in declared order.
            json.dumps(schema),
            any_whitespace=False,
            separators=(",", ":"),
            strict_mode=True,
        )

    def constraint(self, spec: RowSpec, max_new_tokens: int) -> RowConstraint | None:
        """The constraint of one row allowed ``max_new_tokens`` new tokens, or ``None`` for
        a row without a schema. Raises :class:`SchemaError` if the schema is unsupported or
        needs more tokens than ``max_new_tokens`` (:func:`min_new_tokens`)."""
        import xgrammar as xgr

        if spec.schema is None:
            return None
        thinking = spec.thinking and self.think_ids is not None
        reserve = closing_reserve(spec.schema)
        needed = reserve + (THINKING_TOKENS if thinking else 0)
        if needed > max_new_tokens:
            raise SchemaError(
                f"its JSON schema needs max_new_tokens >= {needed} to always finish, "
                f"got {max_new_tokens}"
            )
        matcher = xgr.GrammarMatcher(self.compile(spec.schema))
        return RowConstraint(self, matcher, reserve, _OPEN_THINK if thinking else _JSON)

    def processor(
        self, rows: Sequence[RowSpec], prompt_length: int, max_new_tokens: int
    ) -> _JsonLogitsProcessor:
        """A logits processor for one ``generate`` call over ``rows`` (in batch order).

        ``prompt_length`` is the padded prompt width, ``max_new_tokens`` the shared cap.
        Raises :class:`SchemaError` as :meth:`constraint` does; the message names the row.
        """
        constraints: list[RowConstraint | None] = []
        for index, spec in enumerate(rows):
            try:
                constraints.append(self.constraint(spec, max_new_tokens))
            except SchemaError as exc:
                raise SchemaError(f"request {index}: {exc}") from exc
        return _JsonLogitsProcessor(constraints, prompt_length, max_new_tokens)

    def closing_mask(self, allowed: Any) -> Any:
        """Narrow one row's packed grammar mask to the first closing group it intersects."""
        for group in self._closing_groups:
            narrowed = allowed & group
            if bool(narrowed.any()):
                return narrowed
        return allowed


# Row phases: forced ``<think>``, free reasoning, JSON grammar, finished.
_OPEN_THINK, _THINK, _JSON, _DONE = range(4)


class RowConstraint:
    """One row's grammar state: which next tokens its schema (and thinking phase) allows.

    A decoding loop calls :meth:`mask` on the row's next-token scores before choosing a
    token, then :meth:`accept` with the token chosen. ``remaining`` is how many tokens the
    row may still generate, this one included. Raises ``RuntimeError`` from
    :meth:`accept` if the token was not one the mask allowed (something else changed
    the scores): the caller fails the row rather than return invalid JSON.
    """

    def __init__(self, decoder: StructuredDecoder, matcher: Any, reserve: int, phase: int) -> None:
        import xgrammar as xgr

        self._decoder = decoder
        self._matcher = matcher
        self._reserve = reserve
        self._phase = phase
        self._bitmask = xgr.allocate_token_bitmask(1, decoder.vocab_size)

    def mask(self, scores: Any, remaining: int) -> None:
        """Mask, in place, the 1-D ``scores`` of this row's next token."""
        import xgrammar as xgr

        if self._phase == _DONE:
            return
        if self._phase in (_OPEN_THINK, _THINK):
            self._mask_thinking(scores, remaining)
            return
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)
        if remaining <= self._reserve:
            self._bitmask[0] = self._decoder.closing_mask(self._bitmask[0])
        xgr.apply_token_bitmask_inplace(scores.unsqueeze(0), self._bitmask.to(scores.device))

    def accept(self, token: int) -> None:
        """Advance past ``token``, the one chosen after the last :meth:`mask`."""
        think_ids = self._decoder.think_ids
        if self._phase == _OPEN_THINK:
            self._phase = _THINK
        elif self._phase == _THINK:
            if think_ids is not None and token == think_ids[1]:
                self._phase = _JSON
        elif self._phase == _JSON:
            if not self._matcher.accept_token(token):
                raise RuntimeError(f"token {token} is outside the row's JSON grammar")
            if self._matcher.is_terminated():
                self._phase = _DONE

    def _mask_thinking(self, scores: Any, remaining: int) -> None:
        think_ids = self._decoder.think_ids
        assert think_ids is not None  # rows only think where the tokenizer has the tags
        if self._phase == _OPEN_THINK or remaining <= self._reserve + 1:
            forced = think_ids[0] if self._phase == _OPEN_THINK else think_ids[1]
            keep = scores[forced].clone()
            scores.fill_(-math.inf)
            scores[forced] = keep if math.isfinite(keep) else 0.0
            return
        # Ending the sequence while thinking would leave no answer at all.
        scores[list(self._decoder.stop_ids)] = -math.inf


class _JsonLogitsProcessor:
    """``generate``'s logits processor over a batch's row constraints (``None``: a free
    row, left untouched). Called once per step with the ids so far (prompt plus new
    tokens) and the next-token scores."""

    def __init__(
        self, rows: list[RowConstraint | None], prompt_length: int, max_new_tokens: int
    ) -> None:
        self._rows = rows
        self._prompt_length = prompt_length
        self._max_new_tokens = max_new_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        step = input_ids.shape[1] - self._prompt_length
        last = input_ids[:, -1].tolist() if step > 0 else None
        for index, row in enumerate(self._rows):
            if row is None:
                continue
            if last is not None:
                try:
                    row.accept(last[index])
                except RuntimeError as exc:
                    raise RuntimeError(f"row {index}: {exc}") from exc
            row.mask(scores[index], self._max_new_tokens - step)
        return scores


def _pack(mask: Any) -> Any:
    """Pack a boolean mask (length a multiple of 32) into xgrammar's int32 bitmask layout."""
    import torch

    bits = mask.view(-1, 32).to(torch.int64) << torch.arange(32, dtype=torch.int64)
    words = bits.sum(dim=1)
    # Two's complement: bit 31 set means a negative int32.
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _think_ids(tokenizer: Any) -> tuple[int, int] | None:
    """Ids of ``<think>`` and ``</think>`` where both are single tokens, else ``None``."""
    ids = []
    for tag in ("<think>", "</think>"):
        token_id = tokenizer.convert_tokens_to_ids(tag)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            return None
        ids.append(token_id)
    return ids[0], ids[1]
