"""The Hugging Face ``transformers`` backend: any ``AutoModelForImageTextToText`` checkpoint.

Loading goes through the generic path (``AutoProcessor`` and
``AutoModelForImageTextToText``), prompts through the checkpoint's own chat template with
one image part and one text part per request (and that request's ``enable_thinking``
switch), and a batch through one left-padded ``generate`` call. Only the new tokens are
decoded. Requests with a JSON schema are constrained row by row inside that same call
(:mod:`worker.model.structured`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult
from worker.model.engine import EngineLimits
from worker.model.structured import RowConstraint, RowSpec, StructuredDecoder, split_reasoning

if TYPE_CHECKING:
    from worker.model.hf_engine import TransformersEngine

# Names of torch dtypes; torch itself is imported only by load(), so importing this module
# stays cheap for processes that only need ModelLoadError or the class.
_DTYPES = ("float32", "bfloat16", "float16")
# Files up to this size (configs, templates, small tokenizers) count by content in the
# revision; larger ones (weight shards) by name and size only, so computing it stays cheap.
_HASHED_FILE_BYTES = 1 << 20


class ModelLoadError(Exception):
    """The checkpoint is missing, unreadable or not an image-text-to-text model.

    It stands apart from :class:`shared.errors.SightlineError`: a worker that cannot load
    its model dies at start-up before it takes any job, and the launcher reports it as a
    :class:`worker.launcher.LaunchError`, so it never becomes an HTTP response or a
    job's ``error.code``.
    """


class TransformersBackend:
    """A :class:`~worker.model.base.ModelBackend` on top of ``transformers``.

    ``model_path`` is a checkpoint directory, or a hub id (``owner/name``) where the hub is
    reachable; an existing directory is always read with ``local_files_only`` so nothing is
    downloaded. ``dtype`` is ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``,
    ``"bfloat16"`` or ``"float16"``; anything else raises ``ValueError`` here. Only float32
    greedy decoding gives the same text for a request alone and inside any batch.
    Construction is cheap; :meth:`load` does the work.
    """

    def __init__(self, model_path: str | Path, dtype: str = "auto") -> None:
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(
                f"unsupported dtype {dtype!r}; expected 'auto' or one of {sorted(_DTYPES)}"
            )
        self.model_path = model_path
        self.dtype = dtype
        self._device: str | None = None
        self._revision: str | None = None
        self._processor: Any = None
        self._model: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self._structured: StructuredDecoder | None = None

    @property
    def device(self) -> str:
        """The torch device string given to :meth:`load`; ``RuntimeError`` before it."""
        if self._device is None:
            raise RuntimeError("model not loaded: call load(device) first")
        return self._device

    @property
    def model_revision(self) -> str:
        """A short, stable id of the loaded checkpoint, for cache keys.

        For a directory: a hash over its top-level files, by content for files up to
        1 MiB and by name and size for larger ones (weight shards are not read). For a
        hub id: the resolved commit hash where ``transformers`` reports one.
        ``RuntimeError`` before :meth:`load`.
        """
        if self._revision is None:
            raise RuntimeError("model not loaded: call load(device) first")
        return self._revision

    def load(self, device: str) -> None:
        """Load processor and model onto ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:0"``).

        Raises :class:`ModelLoadError` if a local path does not exist, is not a directory
        with a ``config.json``, has no chat template, or does not load as an
        image-text-to-text model. Errors about the device itself (e.g. CUDA absent)
        come from torch unchanged.
        """
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        source, local = _resolve_source(self.model_path)
        dtype = getattr(torch, _dtype_name(self.dtype, device))
        try:
            processor = AutoProcessor.from_pretrained(source, local_files_only=local)
            # Any: the stubs type ``.to`` through a decorator mypy cannot follow.
            model: Any = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, local_files_only=local
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot load {source!r} as an image-text-to-text checkpoint: {exc}"
            ) from exc
        if getattr(processor, "chat_template", None) is None:
            raise ModelLoadError(f"{source!r} has no chat template; prompts cannot be built")
        # Generation appends on the right, so pads must sit on the left of the prompt.
        processor.tokenizer.padding_side = "left"
        self._processor = processor
        self._model = model.to(device).eval()
        self._stop_ids = _stop_token_ids(model, processor.tokenizer)
        self._structured = None
        self._device = device
        self._revision = _local_revision(Path(source)) if local else _hub_revision(model, source)

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for every request in one ``generate`` call; results keep batch order.

        All requests must share one :class:`GenerationOptions` and the batch must not be
        empty (``ValueError`` otherwise); ``RuntimeError`` before :meth:`load`. Temperature
        0 decodes greedily, above 0 samples at that temperature. ``tokens`` counts the new
        tokens up to and including the first stop token (never the padding after it);
        those tokens are decoded without special tokens and any ``<think>`` section goes
        to ``reasoning``, the rest to ``text``.

        A request with a ``json_schema`` gets a ``text`` that is a compact JSON document
        valid against it and the parsed value in ``json``, within ``max_new_tokens``
        (module :mod:`worker.model.structured` explains the guarantee). Before any forward
        pass, :class:`~worker.model.structured.SchemaError` (a ``ValueError``) is raised if
        a schema is outside the subset or needs more than ``max_new_tokens``. Requests
        without a schema are decoded exactly as in a batch without schema'd neighbours.
        ``RuntimeError`` if a constrained answer still fails to parse (a bug, never the
        model's doing).
        """
        options = _shared_options(batch)
        if self._model is None:
            raise RuntimeError("model not loaded: call load(device) first")
        import torch
        from transformers import LogitsProcessorList

        inputs = self._processor(
            text=[self._prompt(request) for request in batch],
            images=[[request.image] for request in batch],
            padding=True,
            # The template writes every special token itself ([gMASK]<sop>, roles).
            add_special_tokens=False,
            return_tensors="pt",
        ).to(self._device)
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = _generation_kwargs(options)
        if any(request.json_schema is not None for request in batch):
            rows = [RowSpec(request.json_schema, request.thinking) for request in batch]
            processor = self._decoder().processor(rows, prompt_length, options.max_new_tokens)
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        with torch.inference_mode():
            output = self._model.generate(**inputs, **kwargs)
        new_tokens = output[:, prompt_length:].tolist()
        return [
            self.result(row, request.json_schema is not None)
            for row, request in zip(new_tokens, batch, strict=True)
        ]

    def start_engine(self, limits: EngineLimits) -> TransformersEngine:
        """A continuous-batching engine over this loaded model (:mod:`worker.model.
        hf_engine`); ``RuntimeError`` before :meth:`load`."""
        if self._model is None:
            raise RuntimeError("model not loaded: call load(device) first")
        from worker.model.hf_engine import TransformersEngine

        return TransformersEngine(self, limits)

    # -- what the engine uses ------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The loaded ``transformers`` model; ``RuntimeError`` before :meth:`load`."""
        if self._model is None:
            raise RuntimeError("model not loaded: call load(device) first")
        return self._model

    @property
    def stop_ids(self) -> frozenset[int]:
        """The token ids that end a sequence."""
        return self._stop_ids

    def encode(self, requests: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """Each request's model inputs (prompt ids, mask, image patches), unpadded, on
        the CPU: :meth:`collate` pads several and moves them to the device. One
        processor call for all of them (about half the time of one call each), cut
        into one item per request."""
        inputs = self._processor(
            text=[self._prompt(request) for request in requests],
            images=[[request.image] for request in requests],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        real = inputs["attention_mask"].bool()
        patches = inputs["pixel_values"].split(inputs["image_grid_thw"].prod(-1).tolist())
        return [
            {
                "input_ids": inputs["input_ids"][i][real[i]].unsqueeze(0),
                "attention_mask": inputs["attention_mask"][i][real[i]].unsqueeze(0),
                "mm_token_type_ids": inputs["mm_token_type_ids"][i][real[i]].unsqueeze(0),
                "pixel_values": patches[i],
                "image_grid_thw": inputs["image_grid_thw"][i : i + 1],
            }
            for i in range(len(requests))
        ]

    def collate(self, encoded: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad :meth:`encode` outputs into one batch on the model's device, as the
        processor pads a batch (pad id, mask 0, text type)."""
        import torch

        from worker.model.hf_engine import left_pad

        length = max(item["input_ids"].shape[1] for item in encoded)
        pad_id = self._processor.tokenizer.pad_token_id
        batch: dict[str, Any] = {
            "input_ids": torch.cat(
                [left_pad(item["input_ids"], length, 1, value=pad_id) for item in encoded]
            ),
            "attention_mask": torch.cat(
                [left_pad(item["attention_mask"], length, 1) for item in encoded]
            ),
            "mm_token_type_ids": torch.cat(
                [left_pad(item["mm_token_type_ids"], length, 1) for item in encoded]
            ),
            "pixel_values": torch.cat([item["pixel_values"] for item in encoded]),
            "image_grid_thw": torch.cat([item["image_grid_thw"] for item in encoded]),
        }
        return {key: value.to(self._device) for key, value in batch.items()}

    def constraint(self, request: GenerationRequest) -> RowConstraint | None:
        """The JSON-schema constraint of one request, or ``None`` without a schema;
        :class:`~worker.model.structured.SchemaError` as :meth:`generate` raises it."""
        if request.json_schema is None:
            return None
        return self._decoder().constraint(
            RowSpec(request.json_schema, request.thinking), request.options.max_new_tokens
        )

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of generated ``tokens`` up to the first stop token, special tokens left out."""
        return self._decode_first(tokens, count_generated(tokens, self._stop_ids))

    def _decode_first(self, tokens: Sequence[int], count: int) -> str:
        text: str = self._processor.tokenizer.decode(tokens[:count], skip_special_tokens=True)
        # A model can write a NUL (a byte token, sampled), which PostgreSQL's text refuses:
        # the commit of the rows finishing with it would fail, and with it their run.
        # Streamed text and results go through here alike, so they still agree.
        return text.replace("\x00", NUL_STANDIN)

    def result(self, tokens: Sequence[int], structured: bool) -> GenerationResult:
        """The :class:`GenerationResult` of one row's generated ``tokens``: the text up to
        the first stop token, its ``<think>`` section apart, parsed JSON where
        ``structured``. ``RuntimeError`` if a constrained answer does not parse (the
        grammar and the closing reserve rule this out: reaching it is a bug)."""
        count = count_generated(tokens, self._stop_ids)
        reasoning, text = split_reasoning(self._decode_first(tokens, count))
        parsed = None
        if structured:
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise RuntimeError("constrained answer is not JSON") from exc
        return GenerationResult(text=text, tokens=count, reasoning=reasoning, json=parsed)

    def _prompt(self, request: GenerationRequest) -> str:
        # Rendered one by one because enable_thinking is a template-wide variable and
        # requests in one batch may differ in it; the processor call then does what
        # apply_chat_template(tokenize=True) would (image placeholders, padding, ids).
        prompt: str = self._processor.apply_chat_template(
            _chat(request),
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=request.thinking,
        )
        return prompt

    def _decoder(self) -> StructuredDecoder:
        """The constrained-decoding state, built on the first request with a schema."""
        if self._structured is None:
            vocab_size = self._model.get_output_embeddings().weight.shape[0]
            self._structured = StructuredDecoder(
                self._processor.tokenizer, vocab_size, self._stop_ids
            )
        return self._structured


# What a NUL the model wrote becomes in its text (U+FFFD, the replacement character).
NUL_STANDIN = "\ufffd"


def count_generated(row: Sequence[int], stop_ids: frozenset[int]) -> int:
    """Tokens a sequence really generated: up to and including its first stop token.

    ``generate`` pads finished rows of a batch (often with the EOS id itself) until the
    longest row is done; those trailing tokens are not part of the answer.
    """
    for index, token in enumerate(row):
        if token in stop_ids:
            return index + 1
    return len(row)


def _shared_options(batch: Sequence[GenerationRequest]) -> GenerationOptions:
    if not batch:
        raise ValueError("empty batch: nothing to generate")
    options = batch[0].options
    if any(request.options != options for request in batch):
        raise ValueError("all requests in one batch must share the same GenerationOptions")
    return options


def _chat(request: GenerationRequest) -> list[dict[str, Any]]:
    content = [{"type": "image", "image": request.image}, {"type": "text", "text": request.prompt}]
    return [{"role": "user", "content": content}]


def _generation_kwargs(options: GenerationOptions) -> dict[str, Any]:
    if options.temperature > 0:
        return {
            "max_new_tokens": options.max_new_tokens,
            "do_sample": True,
            "temperature": options.temperature,
        }
    # Passing a temperature with do_sample=False only earns a warning, so leave it out.
    return {"max_new_tokens": options.max_new_tokens, "do_sample": False}


def _dtype_name(dtype: str, device: str) -> str:
    """Resolve ``"auto"``: bfloat16 on CUDA (half the memory, tensor cores), else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _resolve_source(model_path: str | Path) -> tuple[str, bool]:
    """Return ``(source, is_local)``, refusing local paths that cannot be checkpoints.

    A string that exists on disk, or looks like a path (absolute, ``.``/``~`` prefix,
    a ``Path`` object, more than one ``/``), is local; anything else is a hub id.
    """
    path = Path(model_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {str(path)!r} is a file, not a checkpoint directory")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model path {str(path)!r} has no config.json: not a Hugging Face checkpoint"
            )
        return str(path), True
    text = str(model_path)
    if (
        isinstance(model_path, Path)
        or path.is_absolute()
        or text.startswith((".", "~"))
        or text.count("/") > 1
    ):
        raise ModelLoadError(f"model path {text!r} does not exist")
    return text, False


def _stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end a sequence: the generation config's EOS ids, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def _local_revision(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(f for f in path.iterdir() if f.is_file()):
        size = file.stat().st_size
        digest.update(json.dumps([file.name, size]).encode())
        if size <= _HASHED_FILE_BYTES:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _hub_revision(model: Any, source: str) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    return str(commit) if commit else hashlib.sha256(source.encode()).hexdigest()[:16]
