"""Build a small GLM-4V checkpoint offline, with random weights.

Nothing can be downloaded here, yet tests, the demo and benchmarks need a checkpoint that
loads through the same generic path as GLM-4.6V-Flash (``AutoProcessor`` and
``AutoModelForImageTextToText``). This module writes one: a ``Glm4vConfig`` with small
dimensions, ``Glm4vForConditionalGeneration`` weights drawn from a seeded generator, a
byte-level BPE tokenizer trained here on an embedded corpus and carrying GLM's special
tokens, the GLM-4.1V chat template and a ``Glm4vProcessor``. Its text is meaningless;
shapes, padding, batching and timings are real.

The same ``(size, seed)`` gives a byte-identical directory on every run, so a checkpoint
can be rebuilt anywhere and still match a cache key or a recorded hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TinySize = Literal["tiny", "medium"]

# GLM-4.1V's special tokens, in the real tokenizer's id order. They follow the learned
# BPE vocabulary, as in the real one, so the ids differ but the relative layout does not.
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
)
# Real GLM-4.1V keeps these as ordinary added tokens: they survive skip_special_tokens.
_PLAIN_ADDED_TOKENS = ("<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>")
# GLM stops on end-of-text and on the start of a new user or tool turn.
_EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

# The GLM-4.1V-9B-Thinking chat template as published with the checkpoint, plus the
# enable_thinking switch exactly as the GLM-V family (GLM-4.5V, GLM-4.6V) templates carry
# it: with enable_thinking=False, "/nothink" ends each user turn (unless already there) and
# the generation prompt holds an empty "<think></think>" so the model answers at once.
# Without the variable, or with True, the prompt is GLM-4.1V's, byte for byte.
CHAT_TEMPLATE = """[gMASK]<sop>
{%- macro visible_text(content) -%}
    {%- if content is string -%}
        {{- content }}
    {%- else -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}
                {{- item.text }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\\n' }}

        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- set text = visible_text(msg.content) %}
        {{- '/nothink' if (enable_thinking is defined and not enable_thinking
            and not text.endswith('/nothink')) else '' }}
    {%- elif msg.role == 'assistant' %}
        {%- if msg.metadata %}
<|assistant|>{{ msg.metadata }}
{{ msg.content }}
        {%- else %}
<|assistant|>
{{ msg.content }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{{ '<think></think>\\n' if (enable_thinking is defined and not enable_thinking) else '' }}
{%- endif %}"""

# Enough varied English (and a little code and digits) for a few hundred merges. Fixed
# text, so training sees the same input every time.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A picture shows a cat sitting on a "
    "red sofa next to a window; outside, two children play in the garden.",
    "Describe this image in detail. What is in the picture? How many people are there? "
    "Read the text on the sign. Is there a car, a bus or a bicycle in the street?",
    "The chart compares revenue for 2021, 2022 and 2023: 12.5, 14.0 and 17.25 million.",
    "A moderation reviewer checks whether an image contains violence, nudity, weapons, "
    "drugs, hate symbols or personal information such as faces and licence plates.",
    "def describe(image):\n    return model.generate(image, prompt='Describe the scene.')",
    "Answer: the photo shows a mountain lake at sunrise, with pine trees, a wooden "
    "boat and snow on the peaks. The sky is orange and pink; the water is calm.",
    "Invoice number 4711, total 99.90 EUR, due on 2024-03-31. Signed by the manager.",
    "Yes. No. Maybe. I cannot tell from this image. The object on the left is a lamp.",
)


@dataclass(frozen=True)
class _Dims:
    """Dimensions of one checkpoint size; see the comments in ``_SIZES``.

    ``bpe_vocab_size`` is the tokenizer training target (the embedded corpus may stop
    short of it); the model's vocabulary is the trained tokenizer plus the added tokens.
    ``max_image_tokens`` caps LLM tokens per image (each is 2x2 vision patches).
    """

    bpe_vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    max_image_tokens: int


_SIZES: dict[str, _Dims] = {
    # Loads in well under a second; an image becomes 1 to 4 LLM tokens.
    "tiny": _Dims(
        bpe_vocab_size=320,
        hidden=64,
        layers=2,
        heads=2,
        kv_heads=1,
        intermediate=128,
        vision_hidden=32,
        vision_depth=1,
        vision_heads=2,
        vision_intermediate=64,
        max_image_tokens=4,
    ),
    # About 40 M parameters, ~40 % of them in the vision tower: it runs once per image,
    # so batching helps far less than on a text-only model of the size, as on a real model
    # whose prefill matters (measured speeds: docs/benchmarks.md).
    "medium": _Dims(
        bpe_vocab_size=512,
        hidden=512,
        layers=7,
        heads=8,
        kv_heads=2,
        intermediate=1792,
        vision_hidden=768,
        vision_depth=3,
        vision_heads=6,
        vision_intermediate=1536,
        max_image_tokens=20,
    ),
}

# GLM-4V's patch geometry: 14-pixel patches, merged 2x2 into one LLM token, and images
# repeated over a temporal patch of 2 frames.
_PATCH = 14
_MERGE = 2
_TEMPORAL = 2
# GLM uses half of each head for rotary embeddings.
_PARTIAL_ROTARY = 0.5


def build_tiny_checkpoint(path: Path, size: TinySize = "tiny", seed: int = 0) -> None:
    """Write a random-weight GLM-4V checkpoint directory at ``path``.

    The directory (created if missing; files of the same name are overwritten) loads with
    ``AutoProcessor.from_pretrained(path)`` and
    ``AutoModelForImageTextToText.from_pretrained(path)``. ``size`` picks the dimensions:
    ``"tiny"`` for tests (well under a megabyte of weights) or ``"medium"`` (about 40 M
    parameters) for benchmarks. ``seed`` fixes the weights; the same ``(size, seed)``
    always produces byte-identical files. Raises ``ValueError`` for an unknown size.
    """
    if size not in _SIZES:
        raise ValueError(f"unknown checkpoint size {size!r}; expected one of {sorted(_SIZES)}")
    dims = _SIZES[size]
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(dims.bpe_vocab_size)
    _build_processor(tokenizer, dims).save_pretrained(str(path))
    _build_model(tokenizer, dims, seed).save_pretrained(str(path))
    _normalise_json_files(path)


def _build_tokenizer(bpe_vocab_size: int) -> Any:
    """Train a byte-level BPE on the embedded corpus and add GLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=list(_SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(_PLAIN_ADDED_TOKENS))
    return tokenizer


def _build_processor(tokenizer: Any, dims: _Dims) -> Any:
    """Pair the tokenizer with GLM-4V image and video processors sized for ``dims``."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    # ``size`` counts pixels over both temporal frames (t*h*w with t=2); one LLM token
    # covers a (patch*merge)^2 square.
    token_pixels = _TEMPORAL * (_PATCH * _MERGE) ** 2
    geometry: dict[str, Any] = {
        "size": {
            "shortest_edge": token_pixels,
            "longest_edge": token_pixels * dims.max_image_tokens,
        },
        "patch_size": _PATCH,
        "temporal_patch_size": _TEMPORAL,
        "merge_size": _MERGE,
    }
    return Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**geometry),
        tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(**geometry),
        chat_template=CHAT_TEMPLATE,
    )


def _build_model(tokenizer: Any, dims: _Dims, seed: int) -> Any:
    """Create ``Glm4vForConditionalGeneration`` with seeded random weights."""
    import torch
    from transformers import GenerationConfig, Glm4vConfig, Glm4vForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL_TOKENS}
    head_dim = dims.hidden // dims.heads
    rotary_half = int(head_dim * _PARTIAL_ROTARY) // 2
    # Split like GLM's [8, 12, 12]: temporal gets the remainder, height and width equal.
    spatial = (rotary_half * 3 // 8) or 1
    mrope_section = [rotary_half - 2 * spatial, spatial, spatial]
    config = Glm4vConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": dims.hidden,
            "intermediate_size": dims.intermediate,
            "num_hidden_layers": dims.layers,
            "num_attention_heads": dims.heads,
            "num_key_value_heads": dims.kv_heads,
            "max_position_embeddings": 4096,
            "pad_token_id": ids["<|endoftext|>"],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section,
                "partial_rotary_factor": _PARTIAL_ROTARY,
            },
        },
        vision_config={
            "depth": dims.vision_depth,
            "hidden_size": dims.vision_hidden,
            "num_heads": dims.vision_heads,
            "intermediate_size": dims.vision_intermediate,
            "out_hidden_size": dims.hidden,
            "patch_size": _PATCH,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": _TEMPORAL,
            "image_size": _PATCH * _MERGE * 2,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    with torch.no_grad():
        # A random head would emit EOS, image placeholders and stray UTF-8 bytes as often
        # as text. Zero logits lose to the positive ones every step, so greedy output is
        # printable and runs to max_new_tokens: predictable lengths for tests and timings.
        model.lm_head.weight[_unprintable_ids(tokenizer)] = 0.0
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[token] for token in _EOS_TOKENS],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    return model


def _unprintable_ids(tokenizer: Any) -> list[int]:
    """Ids of added tokens and of base tokens that do not decode to printable text."""
    base_size = tokenizer.vocab_size  # excludes added tokens, which follow it
    added = list(range(base_size, len(tokenizer)))
    unprintable = [i for i in range(base_size) if not _printable(tokenizer.decode([i]))]
    return unprintable + added


def _printable(text: str) -> bool:
    return text.isprintable() and "\ufffd" not in text


def _normalise_json_files(path: Path) -> None:
    """Rewrite every JSON file with sorted keys so the bytes never depend on dict order."""
    for file in sorted(path.glob("*.json")):
        data = json.loads(file.read_text(encoding="utf-8"))
        file.write_text(
            json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
