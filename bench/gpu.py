"""The worker's model backend on a GPU at GLM-4.6V-Flash's size, with random weights.

No weights can be downloaded, so this builds a ``Glm4vForConditionalGeneration`` with the
published dimensions of GLM-4.6V-Flash (the GLM-4.1V-9B architecture, ~10.3 B
parameters) and random bf16 weights, initialised directly on the GPU, and saves it as a
checkpoint once (about 21 GB, cached under ``.cache/bench/``; built in a staging
directory and renamed, so an interrupted build is never reused). Tokenizer, processor,
chat template and special-token ids come from the offline tiny checkpoint builder; the
image processor is widened so the benchmark images are not downscaled.

The worker then loads it exactly as ``sightline worker`` does (``worker.process.
load_backend``: ``from_pretrained``, ``.to("cuda")``, a warm-up pass) and this script
times ``generate`` at batch 1, 8 and 16: jobs/s and tokens/s, p50 latency of one batched
pass (every request in a batch finishes with it), and peak GPU memory allocated by torch
during the passes. Output text is meaningless; the lm_head is masked to printable tokens
so every request generates exactly ``--tokens`` tokens and timings compare like for like.

Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0. ``--dims tiny``
runs the same code at toy dimensions, on the CPU when there is no GPU: a dry run of this
script, not a measurement.

    python bench/gpu.py [--dims flash|tiny] [--tokens 64] [--passes 5] [--image-side 672]
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from shared.settings import Settings
from worker.model.base import GenerationOptions, GenerationRequest, ModelBackend
from worker.model.tiny import build_tiny_checkpoint
from worker.process import load_backend

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench"
BATCH_SIZES = (1, 8, 16)
PROMPTS = ["Describe this image.", "What colour is the shape?", "Is this safe?", "Caption it."]
GIB = 1024**3
# GLM-4V's geometry: 14-pixel patches merged 2x2 into one LLM token, two temporal frames.
PATCH, MERGE, TEMPORAL = 14, 2, 2


@dataclass(frozen=True)
class Dims:
    """Model dimensions (see ``DIMS``); the vision tower's MLP width is
    ``out_hidden_size`` (= ``hidden``) in transformers' GLM-4V, so it has no field."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_merger_intermediate: int


DIMS = {
    # GLM-4.6V-Flash's config.json (model_type glm4v): the GLM-4.1V-9B layout that
    # transformers' Glm4vConfig defaults describe, with a 128 K context.
    "flash": Dims(
        vocab=151_552,
        hidden=4096,
        layers=40,
        heads=32,
        kv_heads=2,
        intermediate=13_696,
        max_positions=131_072,
        vision_hidden=1536,
        vision_depth=24,
        vision_heads=12,
        vision_merger_intermediate=13_696,
    ),
    # Toy dimensions for a dry run of this script on a CPU.
    "tiny": Dims(
        vocab=1024,
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=128,
        max_positions=4096,
        vision_hidden=32,
        vision_depth=1,
        vision_heads=2,
        vision_merger_intermediate=128,
    ),
}


def build_checkpoint(path: Path, dims: Dims, seed: int, device: str, dtype: str) -> None:
    """Write a random-weight GLM-4V checkpoint with ``dims`` at ``path``, replacing
    anything there. Weights are drawn on ``device`` in ``dtype`` from ``seed``."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        GenerationConfig,
        Glm4vImageProcessor,
        Glm4vProcessor,
    )

    staging = path.with_name(f"{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="sightline-tiny-") as tiny:
        # The tiny checkpoint carries what is not weights: tokenizer with GLM's special
        # tokens, chat template, token ids in the config, stop tokens.
        build_tiny_checkpoint(Path(tiny), size="tiny", seed=seed)
        small = AutoProcessor.from_pretrained(tiny)
        ids = AutoConfig.from_pretrained(tiny)
        generation = GenerationConfig.from_pretrained(tiny)
    token_pixels = TEMPORAL * (PATCH * MERGE) ** 2
    processor = Glm4vProcessor(
        # Up to 4096 LLM tokens per image: the benchmark's images keep their size.
        image_processor=Glm4vImageProcessor(
            size={"shortest_edge": token_pixels, "longest_edge": token_pixels * 4096},
            patch_size=PATCH,
            temporal_patch_size=TEMPORAL,
            merge_size=MERGE,
        ),
        tokenizer=small.tokenizer,
        video_processor=small.video_processor,
        chat_template=small.chat_template,
    )
    config = glm4v_config(dims, ids)
    torch.manual_seed(seed)
    # Built in place on the device in the target dtype: 10 B parameters drawn in fp32 on
    # the CPU would take minutes and 41 GB of host memory.
    with torch.device(device):
        model: Any = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    with torch.no_grad():
        # Random logits pick unprintable bytes, image placeholders, stop tokens and ids
        # beyond the small tokenizer; zeroing those rows (the rule of the tiny builder)
        # makes greedy decoding emit text and always run to max_new_tokens.
        keep = torch.zeros(dims.vocab, dtype=torch.bool, device=device)
        keep[_printable_ids(processor.tokenizer)] = True
        model.lm_head.weight[~keep] = 0.0
    model.generation_config = generation
    model.save_pretrained(str(staging))
    processor.save_pretrained(str(staging))
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def glm4v_config(dims: Dims, ids: Any) -> Any:
    """A ``Glm4vConfig`` with ``dims``, taking pad and image/video token ids from the
    config ``ids`` of the tiny checkpoint (they must match its tokenizer)."""
    from transformers import Glm4vConfig

    return Glm4vConfig(
        text_config={
            "vocab_size": dims.vocab,
            "hidden_size": dims.hidden,
            "intermediate_size": dims.intermediate,
            "num_hidden_layers": dims.layers,
            "num_attention_heads": dims.heads,
            "num_key_value_heads": dims.kv_heads,
            "max_position_embeddings": dims.max_positions,
            "pad_token_id": ids.text_config.pad_token_id,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10_000.0,
                "mrope_section": _mrope_section(dims.hidden // dims.heads),
                "partial_rotary_factor": 0.5,
            },
        },
        vision_config={
            "depth": dims.vision_depth,
            "hidden_size": dims.vision_hidden,
            "num_heads": dims.vision_heads,
            "intermediate_size": dims.vision_merger_intermediate,
            "out_hidden_size": dims.hidden,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "image_size": 336,
        },
        image_token_id=ids.image_token_id,
        video_token_id=ids.video_token_id,
        image_start_token_id=ids.image_start_token_id,
        image_end_token_id=ids.image_end_token_id,
        video_start_token_id=ids.video_start_token_id,
        video_end_token_id=ids.video_end_token_id,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """GLM splits the rotary half of each head (``head_dim * 0.5 / 2`` frequencies) into
    temporal, height and width sections; 128 gives the published ``[8, 12, 12]``."""
    rotary_half = head_dim // 4
    spatial = (rotary_half * 3 // 8) or 1
    return [rotary_half - 2 * spatial, spatial, spatial]


def _printable_ids(tokenizer: Any) -> list[int]:
    """Base-vocabulary ids that decode to printable text (added tokens excluded)."""
    printable = []
    for token_id in range(tokenizer.vocab_size):
        text = tokenizer.decode([token_id])
        if text.isprintable() and "\ufffd" not in text:
            printable.append(token_id)
    return printable


def requests_for(count: int, side: int, tokens: int) -> list[GenerationRequest]:
    """``count`` distinct ``side`` x ``3/4 side`` pictures with short prompts."""
    out = []
    for index in range(count):
        size = (side, side * 3 // 4)
        image = Image.new("RGB", size, (250, 250, 250))
        colour = ((index * 67) % 256, (index * 131) % 256, (index * 199) % 256)
        inset = 4 + index % 24
        ImageDraw.Draw(image).ellipse((inset, inset, size[0] - inset, size[1] - inset), colour)
        # A PNG round trip, as the worker gets images from the blob store.
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        out.append(
            GenerationRequest(
                image=Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"),
                prompt=PROMPTS[index % len(PROMPTS)],
                options=GenerationOptions(max_new_tokens=tokens),
            )
        )
    return out


@dataclass(frozen=True)
class Row:
    """One batch size's measurement; times in seconds, memory in bytes (None on CPU)."""

    batch: int
    passes: int
    seconds: list[float]
    tokens: int
    peak_bytes: int | None

    @property
    def jobs_per_s(self) -> float:
        return self.batch * self.passes / sum(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / sum(self.seconds)


def measure(backend: ModelBackend, batch: int, passes: int, side: int, tokens: int) -> Row:
    """``passes`` timed ``generate`` calls of ``batch`` distinct requests after one
    untimed pass; fails if any request stopped short of ``tokens`` new tokens."""
    import torch

    cuda = torch.cuda.is_available()
    requests = requests_for(batch * (passes + 1), side, tokens)
    backend.generate(requests[:batch])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds, generated = [], 0
    for start in range(batch, len(requests), batch):
        began = time.perf_counter()
        results = backend.generate(requests[start : start + batch])
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
        generated += sum(result.tokens for result in results)
    expected = batch * passes * tokens
    if generated != expected:
        raise RuntimeError(f"generated {generated} tokens, expected {expected}: timings unfair")
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return Row(batch, passes, seconds, generated, peak)


def parameter_count(model: Path) -> int:
    """Parameters stored in the checkpoint's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(model.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(tensors.get_slice(name).get_shape())
    return total


def image_tokens(model: Path, side: int) -> int:
    """LLM tokens one benchmark image becomes (2x2 merged patches)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model))
    grid = processor.image_processor(images=[requests_for(1, side, 1)[0].image])["image_grid_thw"]
    t, h, w = (int(v) for v in grid[0])
    return t * h * w // (MERGE * MERGE)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", choices=sorted(DIMS), default="flash")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--passes", type=int, default=5, help="timed passes per batch size")
    parser.add_argument("--image-side", type=int, default=672, help="image width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    if torch.cuda.is_available():
        device, dtype = "cuda", "bfloat16"
    elif args.dims == "tiny":
        device, dtype = "cpu", "float32"
    else:
        print("skipped: no CUDA device (run with --dims tiny for a CPU dry run)")
        return 0

    dims = DIMS[args.dims]
    model = CACHE / f"glm4v-{args.dims}-{dtype}-seed{args.seed}"
    if not (model / "config.json").is_file():
        print(f"building random-weight GLM-4V ({args.dims} dims) at {model} ...", flush=True)
        began = time.perf_counter()
        build_checkpoint(model, dims, args.seed, device, dtype)
        print(f"  built in {time.perf_counter() - began:.1f} s", flush=True)

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sightline-bench-") as data:
        settings = Settings(data_dir=Path(data), model_path=str(model), dtype=dtype)
        # "0": the launcher's name for the one card a pinned worker sees.
        backend = load_backend(settings, "cpu" if device == "cpu" else "0")
    load_s = time.perf_counter() - began
    weights = torch.cuda.memory_allocated() if device == "cuda" else None

    rows = [
        measure(backend, batch, args.passes, args.image_side, args.tokens) for batch in BATCH_SIZES
    ]

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run, not a benchmark)"
    params = parameter_count(model)
    print(f"\nGPU benchmark: random-weight GLM-4V at {args.dims} dims ({params:,} parameters)")
    print(f"  device {name}, {dtype}, torch {torch.__version__}")
    print(
        f"  image {args.image_side}x{args.image_side * 3 // 4} "
        f"({image_tokens(model, args.image_side)} image tokens), "
        f"{args.tokens} new tokens per request, {args.passes} timed passes per batch size"
    )
    print(f"  load (from_pretrained + to device + warm-up): {load_s:.1f} s", end="")
    print(f"; weights {weights / GIB:.1f} GiB" if weights is not None else "")
    print("  batch   jobs/s   tokens/s   p50 latency   peak memory")
    for row in rows:
        peak = f"{row.peak_bytes / GIB:8.1f} GiB" if row.peak_bytes is not None else "     n/a"
        print(
            f"  {row.batch:5d} {row.jobs_per_s:8.2f} {row.tokens_per_s:10.1f} "
            f"{statistics.median(row.seconds):11.2f} s {peak}"
        )
    base = rows[0].jobs_per_s
    print(
        "  throughput vs batch 1: "
        + ", ".join(f"{r.jobs_per_s / base:.2f}x@{r.batch}" for r in rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
