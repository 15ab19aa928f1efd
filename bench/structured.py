"""What does JSON-schema constrained decoding cost, at batch 8?

Measured side by side in one run, on the medium random GLM-4V checkpoint (the honest CPU
stand-in for a real model), through ``TransformersBackend.generate``:

* constrained: 8 requests, each with one of two moderation-style schemas;
* unconstrained: the same 8 requests without a schema, with ``max_new_tokens`` set to the
  number of decoding steps the constrained batch took (the longest row's token count; the
  random model never stops on its own), so both modes do exactly the same forward passes
  and the difference is the cost of the grammar masks alone.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema
from PIL import Image

from tests.stack import make_image
from worker.model.base import GenerationOptions, GenerationRequest
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


def timed(backend: TransformersBackend, batch: list[GenerationRequest]) -> tuple[float, int]:
    """Seconds for one ``generate`` call and its decoding steps; checks every answer."""
    started = time.perf_counter()
    results = backend.generate(batch)
    elapsed = time.perf_counter() - started
    for request, result in zip(batch, results, strict=True):
        if request.json_schema is not None:
            jsonschema.validate(result.json, request.json_schema)
    return elapsed, max(result.tokens for result in results)


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
    _, steps = timed(backend, constrained)
    same_steps = GenerationOptions(max_new_tokens=steps)
    plain = [dataclasses.replace(r, options=same_steps, json_schema=None) for r in constrained]
    _, plain_steps = timed(backend, plain)
    assert plain_steps == steps, "the unconstrained batch must run as many steps"
    times: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    for _ in range(args.rounds):
        times["unconstrained"].append(timed(backend, plain)[0])
        times["constrained"].append(timed(backend, constrained)[0])

    print(f"\nstructured-output benchmark: medium GLM-4V, batch {BATCH}, CPU, greedy")
    print(f"  {steps} decoding steps per batch in both modes, {args.rounds} rounds each")
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
