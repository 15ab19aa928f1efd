"""The worker's model backend on a GPU at GLM-4.6V-Flash's size, with random weights.

No weights can be downloaded, so this builds a ``Glm4vForConditionalGeneration`` with the
published dimensions of GLM-4.6V-Flash (the GLM-4.1V-9B architecture, ~10.3 B
parameters) and random bf16 weights, initialised directly on the GPU, and saves it as a
checkpoint once (about 21 GB, cached under ``.cache/bench/``; built in a staging
directory and renamed, so an interrupted build is never reused). Tokenizer, processor,
chat template and special-token ids come from the offline tiny checkpoint builder; the
image processor is widened so the benchmark images are not downscaled. Output text is
meaningless; the lm_head is masked to printable tokens so every request generates exactly
its ``max_new_tokens`` (checked for every request below) and timings compare like for
like.

The worker then loads it exactly as ``sightline worker`` does (``worker.process.
load_backend``: ``from_pretrained``, ``.to("cuda")``, a warm-up through the engine) and
this script measures three things:

1. **static table**: ``generate`` at batch 1, 8 and 16, ``--tokens`` new tokens each
   (64), ``--passes`` timed passes (5) after an untimed one: jobs/s and tokens/s, p50
   latency of one batched pass (every request in a batch finishes with it), and peak GPU
   memory allocated by torch during the passes;
2. **mixed workload**: ``--mixed-requests`` requests with a long-tailed mix of
   ``max_new_tokens`` (three in four under 16, one in ten over 100, mean about 32; drawn
   from ``--mixed-seed``), run (a) through the continuous-batching engine with at most 8
   rows (requests added in arrival order as the worker adds bulk jobs: once a row is
   free, ``--prefill-group`` at a time, those beyond the free rows ahead; stepped until
   all have finished), (b) as static batches: groups of 8 in arrival order, each one
   ``generate`` call at the group's longest ``max_new_tokens`` (a static batch shares its
   options and runs to its longest row), and (c) through the engine again with every
   request at the mix's mean (rounded): the uniform work the mix is compared with.
   Printed: useful tokens/s of each (useful = each request's own ``max_new_tokens``, not
   the padding a static batch runs on for) and the ratios continuous / static and
   continuous mixed / continuous uniform;
3. **decode step time** of the engine with 1 and 16 rows running: the median of
   ``--decode-steps`` steps after the rows were prefilled (and a few untimed steps), each
   between ``torch.cuda.synchronize()`` calls, against the bandwidth floor of a step:
   bytes of the weights / HBM bandwidth. The bandwidth is ``--hbm-gbps`` (GB/s; default
   3350, the H100 SXM's; pass the card's figure, e.g. 4800 for an H200), and the output
   says which figure was used. The floor from the text decoder and lm_head alone (what a
   decode step reads: the vision tower is idle and only a few embedding rows are
   gathered) is printed beside it.

Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0. ``--dims tiny``
runs the same code at toy dimensions, on the CPU when there is no GPU: a dry run of this
script, not a measurement (its static table defaults to 16 tokens and 1 pass, so it
takes about a minute on two cores). ``--dims deep`` is GLM-4.6V-Flash's depth at those
toy widths: with ``OMP_NUM_THREADS=1`` on a CPU each pass costs its dispatch rather than
its arithmetic, which emulates the card's launch-bound steps (the mixed and uniform
paths then show what the engine's own bookkeeping costs in that regime).

    python bench/gpu.py [--dims flash|tiny|deep] [--tokens 64] [--passes 5] [--image-side 672]
        [--mixed-requests 128] [--mixed-seed 0] [--decode-steps 20] [--hbm-gbps 3350]
        [--prefill-group 4]
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from shared.settings import Settings
from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult, ModelBackend
from worker.model.engine import EngineLimits
from worker.model.tiny import build_tiny_checkpoint
from worker.process import load_backend
from worker.scheduling import bulk_joins

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench"
BATCH_SIZES = (1, 8, 16)
PROMPTS = ["Describe this image.", "What colour is the shape?", "Is this safe?", "Caption it."]
GIB = 1024**3
# The mixed workload's row cap, for the engine and for the static groups alike.
MIXED_ROWS = 8
DECODE_ROWS = (1, 16)
# Untimed decode steps before the timed ones (first passes at a new batch shape).
DECODE_WARM_STEPS = 3
# No token budget for the engines here: static ``generate`` has none, and every batch in
# this script fits on the card; the comparison is about scheduling.
UNBOUNDED_TOKENS = 1 << 30
H100_SXM_GBPS = 3350.0
# The static table's (new tokens per request, timed passes per batch size) by --dims.
DEFAULT_TABLE = {"flash": (64, 5), "tiny": (16, 1), "deep": (16, 1)}
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
# GLM-4.6V-Flash's depth (40 text layers, 24 vision blocks) at the toy widths: on a CPU
# with one torch thread its passes cost their dispatch (Python, kernel calls), not their
# arithmetic, as the card's decode steps do (8-11x its bandwidth floor); an emulation of
# that regime, not a measurement of the card.
DIMS["deep"] = replace(DIMS["tiny"], layers=40, vision_depth=24)


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
    # Up to 4096 LLM tokens per image: the benchmark's images keep their size. (A plain
    # dict: the processor's typed kwargs do not declare the GLM-4V geometry it accepts.)
    image_options: dict[str, Any] = {
        "size": {"shortest_edge": token_pixels, "longest_edge": token_pixels * 4096},
        "patch_size": PATCH,
        "temporal_patch_size": TEMPORAL,
        "merge_size": MERGE,
    }
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**image_options),
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


def long_tailed_caps(count: int, seed: int) -> list[int]:
    """``count`` values of ``max_new_tokens`` in arrival order, drawn from ``seed``: a
    tenth of them long (120-256), 15 % medium (24-64), the rest short (4-15); the mean is
    about 32 and every static group of 8 holding a long one runs on for it."""
    draw = random.Random(seed)
    long = round(count * 0.10)
    medium = round(count * 0.15)
    caps = [draw.randint(120, 256) for _ in range(long)]
    caps += [draw.randint(24, 64) for _ in range(medium)]
    caps += [draw.randint(4, 15) for _ in range(count - long - medium)]
    draw.shuffle(caps)
    return caps


def with_cap(request: GenerationRequest, cap: int) -> GenerationRequest:
    """``request`` with ``max_new_tokens`` = ``cap`` (its other options kept)."""
    return replace(request, options=replace(request.options, max_new_tokens=cap))


@dataclass(frozen=True)
class MixedRun:
    """One path through the mixed workload: ``useful`` tokens (each request's own cap),
    ``generated`` tokens (a static batch's short rows run on to its longest), model
    ``steps`` (forward passes), wall ``seconds``, peak memory in bytes (None on CPU)."""

    useful: int
    generated: int
    steps: int
    seconds: float
    peak_bytes: int | None

    @property
    def useful_per_s(self) -> float:
        return self.useful / self.seconds


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _start_clock() -> float:
    import torch

    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def _peak() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def run_engine(
    backend: ModelBackend, requests: list[GenerationRequest], rows: int, group: int
) -> MixedRun:
    """``requests`` through a fresh engine of ``rows`` rows, added in arrival order as
    the worker adds bulk jobs (``worker.scheduling.bulk_joins``): once a row is free, a
    ``group`` at a time (those beyond the free rows ahead); steps until every one has
    finished; fails unless each generated exactly its own ``max_new_tokens``."""
    limits = EngineLimits(max_rows=rows, max_tokens=UNBOUNDED_TOKENS, ahead_rows=group)
    engine = backend.start_engine(limits)
    pending = deque((uuid.uuid4(), request) for request in requests)
    caps = {job: request.options.max_new_tokens for job, request in pending}
    results: dict[uuid.UUID, GenerationResult] = {}
    steps = 0
    began = _start_clock()
    while pending or engine.running:
        free = engine.free_rows
        joining = bulk_joins(
            free,
            group=group,
            free_ahead=engine.free_ahead,
            waiting_ahead=len(engine.ahead),
            waited_steps=0,
        )
        for placed in range(min(joining, len(pending))):
            engine.add(*pending.popleft(), ahead=placed >= free)
        events = engine.step()
        steps += 1
        if events.failed:
            raise RuntimeError(f"engine rows failed: {list(events.failed.values())!r}")
        results.update(events.finished)
    _sync()
    seconds = time.perf_counter() - began
    wrong = [(results[job].tokens, cap) for job, cap in caps.items() if job in results]
    wrong = [(got, cap) for got, cap in wrong if got != cap]
    if len(results) != len(caps) or wrong:
        raise RuntimeError(f"engine: {len(results)}/{len(caps)} finished; (tokens, cap) {wrong}")
    useful = sum(caps.values())
    return MixedRun(useful, useful, steps, seconds, _peak())


def run_static(backend: ModelBackend, requests: list[GenerationRequest], rows: int) -> MixedRun:
    """``requests`` in groups of ``rows`` in arrival order, each group one ``generate``
    call at its longest ``max_new_tokens``; fails unless every row generated exactly
    that many."""
    useful = generated = steps = 0
    began = _start_clock()
    for start in range(0, len(requests), rows):
        group = requests[start : start + rows]
        caps = [request.options.max_new_tokens for request in group]
        longest = max(caps)
        results = backend.generate([with_cap(request, longest) for request in group])
        wrong = [result.tokens for result in results if result.tokens != longest]
        if wrong:
            raise RuntimeError(f"static: rows generated {wrong} tokens, expected {longest}")
        useful += sum(caps)
        generated += longest * len(group)
        steps += longest
    _sync()
    return MixedRun(useful, generated, steps, time.perf_counter() - began, _peak())


def decode_step_seconds(backend: ModelBackend, rows: int, side: int, steps: int) -> list[float]:
    """The wall time of ``steps`` pure decode steps (no row joining or leaving) of a
    fresh engine with ``rows`` rows running, after they were prefilled together and
    ``DECODE_WARM_STEPS`` untimed steps; each step between CUDA synchronisations."""
    cap = 1 + DECODE_WARM_STEPS + steps + 1  # nobody finishes during the timed steps
    engine = backend.start_engine(EngineLimits(max_rows=rows, max_tokens=UNBOUNDED_TOKENS))
    for request in requests_for(rows, side, cap):
        engine.add(uuid.uuid4(), request)
    events = engine.step()
    if events.prefilled != rows or events.failed:
        raise RuntimeError(f"prefilled {events.prefilled}/{rows} rows: {events.failed!r}")
    for _ in range(DECODE_WARM_STEPS):
        engine.step()
    seconds = []
    for _ in range(steps):
        _sync()
        began = time.perf_counter()
        events = engine.step()
        _sync()
        seconds.append(time.perf_counter() - began)
        if len(events.tokens) != rows or events.prefilled or events.finished or events.failed:
            raise RuntimeError(f"step was not a pure decode of {rows} rows: {events!r}")
    for job in engine.running:
        engine.abort(job)
    return seconds


_DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
# What a decode step does not read in full: the vision tower (idle) and the input
# embedding table (a gather of one row per running request).
_NOT_DECODE = ("model.visual.", "model.language_model.embed_tokens.")


@dataclass(frozen=True)
class Weights:
    """The checkpoint's parameters and bytes, all and those a decode step reads."""

    parameters: int
    bytes: int
    decode_bytes: int


def weights_of(model: Path) -> Weights:
    """Sizes of the checkpoint's safetensors files' tensors (read from their headers)."""
    from safetensors import safe_open

    parameters = size = decode = 0
    for shard in sorted(model.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = tensors.get_slice(name)
                count = math.prod(tensor.get_shape())
                parameters += count
                size += count * _DTYPE_BYTES[tensor.get_dtype()]
                if not name.startswith(_NOT_DECODE):
                    decode += count * _DTYPE_BYTES[tensor.get_dtype()]
    return Weights(parameters, size, decode)


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
    parser.add_argument(
        "--tokens", type=int, help="static table: new tokens per request (64; tiny dims 16)"
    )
    parser.add_argument(
        "--passes", type=int, help="static table: timed passes per batch size (5; tiny dims 1)"
    )
    parser.add_argument("--image-side", type=int, default=672, help="image width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    parser.add_argument("--mixed-requests", type=int, default=128, help="mixed workload size")
    parser.add_argument("--mixed-seed", type=int, default=0, help="the mix's seed")
    parser.add_argument("--decode-steps", type=int, default=20, help="timed decode steps")
    parser.add_argument(
        "--prefill-group",
        type=int,
        default=Settings.model_fields["prefill_group"].default,
        help="engine runs: requests that join together (SIGHTLINE_PREFILL_GROUP; 1: each "
        "as soon as a row is free)",
    )
    parser.add_argument(
        "--hbm-gbps",
        type=float,
        default=None,
        help=f"HBM bandwidth in GB/s for the floor (default {H100_SXM_GBPS:g}, H100 SXM)",
    )
    args = parser.parse_args()
    # A dry run at tiny dims keeps the static table short: it checks the code, not speed.
    tokens, passes = DEFAULT_TABLE[args.dims]
    args.tokens = tokens if args.tokens is None else args.tokens
    args.passes = passes if args.passes is None else args.passes

    import torch

    dtype: Literal["bfloat16", "float32"]
    if torch.cuda.is_available():
        device, dtype = "cuda", "bfloat16"
    elif args.dims != "flash":
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
        # "0": the launcher's name for the one card a pinned worker sees. The worker's
        # engine is idle after its warm-up; the measurements below start their own.
        backend, _ = load_backend(settings, "cpu" if device == "cpu" else "0")
    load_s = time.perf_counter() - began
    weights_resident = torch.cuda.memory_allocated() if device == "cuda" else None

    rows = [
        measure(backend, batch, args.passes, args.image_side, args.tokens) for batch in BATCH_SIZES
    ]

    caps = long_tailed_caps(args.mixed_requests, args.mixed_seed)
    images = requests_for(len(caps), args.image_side, 1)
    mixed = [with_cap(request, cap) for request, cap in zip(images, caps, strict=True)]
    continuous = run_engine(backend, mixed, MIXED_ROWS, args.prefill_group)
    static = run_static(backend, mixed, MIXED_ROWS)
    mean_cap = round(statistics.mean(caps))
    uniform = run_engine(
        backend,
        [with_cap(request, mean_cap) for request in images],
        MIXED_ROWS,
        args.prefill_group,
    )

    decode = {
        count: decode_step_seconds(backend, count, args.image_side, args.decode_steps)
        for count in DECODE_ROWS
    }

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run, not a benchmark)"
    weights = weights_of(model)
    print(
        f"\nGPU benchmark: random-weight GLM-4V at {args.dims} dims "
        f"({weights.parameters:,} parameters)"
    )
    print(f"  device {name}, {dtype}, torch {torch.__version__}")
    print(
        f"  image {args.image_side}x{args.image_side * 3 // 4} "
        f"({image_tokens(model, args.image_side)} image tokens)"
    )
    print(f"  load (from_pretrained + to device + warm-up): {load_s:.1f} s", end="")
    print(f"; weights {weights_resident / GIB:.1f} GiB" if weights_resident is not None else "")

    print(
        f"\nstatic generate: {args.tokens} new tokens per request, "
        f"{args.passes} timed pass{'es' if args.passes != 1 else ''} per batch size"
    )
    print("  batch   jobs/s   tokens/s   p50 latency   peak memory")
    for row in rows:
        print(
            f"  {row.batch:5d} {row.jobs_per_s:8.2f} {row.tokens_per_s:10.1f} "
            f"{statistics.median(row.seconds):11.2f} s {_gib(row.peak_bytes):>13}"
        )
    base = rows[0].jobs_per_s
    print(
        "  throughput vs batch 1: "
        + ", ".join(f"{r.jobs_per_s / base:.2f}x@{r.batch}" for r in rows)
    )

    print(
        f"\nmixed workload: {len(caps)} requests (seed {args.mixed_seed}), max_new_tokens "
        f"{min(caps)}-{max(caps)}, mean {statistics.mean(caps):.1f}, median "
        f"{statistics.median(caps):g}; {sum(cap < 16 for cap in caps)} under 16, "
        f"{sum(cap > 100 for cap in caps)} over 100; at most {MIXED_ROWS} rows, joining "
        f"{args.prefill_group} at a time (--prefill-group)"
    )
    print("  path                                useful tok/s  generated  steps     wall  peak")
    for label, run in (
        (f"continuous (engine, {MIXED_ROWS} rows)", continuous),
        (f"static (generate, groups of {MIXED_ROWS})", static),
        (f"uniform, all {mean_cap} (engine)", uniform),
    ):
        print(
            f"  {label:36s} {run.useful_per_s:12.1f} {run.generated:10d} {run.steps:6d} "
            f"{run.seconds:7.1f} s {_gib(run.peak_bytes)}"
        )
    print(
        f"  every request generated exactly its max_new_tokens ({continuous.useful} useful "
        f"tokens); continuous / static useful tokens/s: "
        f"{continuous.useful_per_s / static.useful_per_s:.2f}x; continuous mixed / "
        f"continuous uniform: {continuous.useful_per_s / uniform.useful_per_s:.2f}"
    )

    gbps = H100_SXM_GBPS if args.hbm_gbps is None else args.hbm_gbps
    source = "the H100 SXM's, --hbm-gbps default" if args.hbm_gbps is None else "--hbm-gbps"
    floor = weights.bytes / (gbps * 1e9)
    decode_floor = weights.decode_bytes / (gbps * 1e9)
    print(
        f"\ndecode step time (engine, median of {args.decode_steps} steps after prefill) vs "
        f"the bandwidth floor = {weights.bytes / 1e9:.4g} GB of weights / {gbps:g} GB/s "
        f"({source}) = {floor * 1e3:.4g} ms"
    )
    print(
        f"  (a decode step reads only the text decoder and lm_head, "
        f"{weights.decode_bytes / 1e9:.4g} GB: decoder floor {decode_floor * 1e3:.4g} ms)"
    )
    print("  rows    step ms   step / floor   step / decoder floor   tokens/s")
    for count, seconds in decode.items():
        step = statistics.median(seconds)
        print(
            f"  {count:4d} {step * 1e3:10.2f} {step / floor:13.2f}x "
            f"{step / decode_floor:21.2f}x {count / step:10.1f}"
        )
    return 0


def _gib(size: int | None) -> str:
    return f"{size / GIB:.1f} GiB" if size is not None else "n/a"


if __name__ == "__main__":
    sys.exit(main())
