"""What does JSON-schema constrained decoding cost, at batch 8?

Measured side by side in one run, on the medium random GLM-4V checkpoint (the honest CPU
stand-in for a real model), through the worker's continuous-batching engine
(``TransformersBackend.start_engine``), 8 rows joining together:

* constrained: 8 requests, each with one of two moderation-style schemas;
* unconstrained: the same 8 requests without a schema, each with ``max_new_tokens`` set to
  the tokens its constrained twin wrote (the random model never stops on its own), so
  both modes do exactly the same steps over the same rows and the difference is the cost
  of the grammar masks alone.

Rounds alternate between the two modes after one warm-up pass each, so drift in the
machine's speed hits both alike, and medians keep a busy neighbour's burst from deciding
the result. Prints seconds per batch, jobs per second and the throughput ratio
constrained / unconstrained; the issue's target is a slowdown of at most
15 %, i.e. a ratio of at least 0.85. Every constrained answer is checked with
``jsonschema``.

    python bench/structured.py [--rounds 9] [--tokens 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema
from PIL import Image

from tests.stack import make_image
from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult
from worker.model.engine import EngineLimits
from worker.model.hf import TransformersBackend
from worker.model.tiny import CHAT_TEMPLATE, build_tiny_checkpoint

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench"
PROMPTS = ["Describe this image.", "Is this safe?", "Classify it.", "Moderate this upload."]
BATCH = 8
SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "label": {"enum": ["ok", "harassment", "violence", "nudity", "weapons"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "explanation": {"type": "string", "maxLength": 2000},
        },
        "required": ["label", "confidence", "explanation"],
    },
    {
        "type": "object",
        "properties": {
            "safe": {"type": "boolean"},
            "people": {"type": "integer", "minimum": 0, "maximum": 100},
            "reasons": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        },
        "required": ["safe", "reasons"],
    },
]


def medium_checkpoint() -> Path:
    """The benchmark checkpoint, rebuilt where the cached one predates the chat template."""
    path = CACHE / "medium-glm4v"
    template = path / "chat_template.jinja"
    if not template.exists() or template.read_text(encoding="utf-8") != CHAT_TEMPLATE:
        build_tiny_checkpoint(path, size="medium", seed=0)
    return path


def timed(backend: TransformersBackend, batch: list[GenerationRequest]) -> tuple[float, list[int]]:
    """Seconds for ``batch`` through a fresh engine, all rows joining at once, and each
    row's token count; checks every answer."""
    engine = backend.start_engine(EngineLimits(max_rows=len(batch), max_tokens=1 << 30))
    ids = [uuid.uuid4() for _ in batch]
    started = time.perf_counter()
    for job_id, request in zip(ids, batch, strict=True):
        engine.add(job_id, request)
    results: dict[uuid.UUID, GenerationResult] = {}
    while engine.running:
        results.update(engine.step().finished)
    elapsed = time.perf_counter() - started
    for job_id, request in zip(ids, batch, strict=True):
        if request.json_schema is not None:
            jsonschema.validate(results[job_id].json, request.json_schema)
    return elapsed, [results[job_id].tokens for job_id in ids]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    backend = TransformersBackend(medium_checkpoint())
    backend.load("cpu")
    constrained = [
        GenerationRequest(
            image=Image.open(io.BytesIO(make_image(i, size=(224, 168)))).convert("RGB"),
            prompt=PROMPTS[i % len(PROMPTS)],
            options=GenerationOptions(max_new_tokens=args.tokens),
            json_schema=SCHEMAS[i % len(SCHEMAS)],
        )
        for i in range(BATCH)
    ]
    _, counts = timed(backend, constrained)
    plain = [
        dataclasses.replace(r, options=GenerationOptions(max_new_tokens=count), json_schema=None)
        for r, count in zip(constrained, counts, strict=True)
    ]
    _, plain_counts = timed(backend, plain)
    assert plain_counts == counts, "every unconstrained row must write as many tokens"
    steps = max(counts)
    times: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    for _ in range(args.rounds):
        times["unconstrained"].append(timed(backend, plain)[0])
        times["constrained"].append(timed(backend, constrained)[0])

    print(f"\nstructured-output benchmark: medium GLM-4V, batch {BATCH}, CPU, greedy")
    print(
        f"  rows of {min(counts)}-{steps} tokens ({sum(counts)} in all) in both modes,"
        f" {args.rounds} rounds each"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"  {name:13s}: median {medians[name]:6.3f} s/batch (min {min(values):6.3f})"
            f"  {BATCH / medians[name]:5.2f} jobs/s"
        )
    ratio = medians["unconstrained"] / medians["constrained"]
    print(
        f"  constrained / unconstrained throughput (medians) = {ratio:.3f}"
        f"   ({(1 - ratio) * 100:.1f} % slower; target <= 15 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
