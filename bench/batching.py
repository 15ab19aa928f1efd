"""Does micro-batching pay, and does the system around the model keep up with it?

Measured side by side in one run, on the medium random GLM-4V checkpoint (the honest
CPU stand-in for a real model):

* bare model: ``TransformersBackend.generate`` at batch 1 and batch 8;
* whole system: jobs submitted over HTTP to the API (gunicorn) in one ``POST
  /v1/batches``, claimed and run by a ``sightline worker`` process, results committed to
  PostgreSQL (SQLite when no server can be had) and read back over HTTP, with
  ``SIGHTLINE_MAX_BATCH_SIZE`` 8 (and 1, with one ``POST /v1/jobs`` per job); at batch
  8 also with one ``POST /v1/jobs`` per job. On a CPU machine the API's intake work
  shares the two cores with the model (on a GPU host it does not), so that variant shows
  what intake costs the model here.

Throughput is jobs per second; system time runs from the first submission to the last
``finished_at``. Prints the ratios the issue sets targets for:
system@8 / bare@8 (≥ 0.9) and system@8 / system@1 (≥ 3).

    python bench/batching.py [--jobs 192] [--tokens 16]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from datetime import datetime
from pathlib import Path

from harness import checkpoint, running_stack
from PIL import Image

from tests.stack import Stack, make_image
from worker.model.base import GenerationOptions, GenerationRequest
from worker.model.hf import TransformersBackend

PROMPTS = ["Describe this image.", "What colour is the shape?", "Is this safe?", "Caption it."]


def bare_model(model: Path, jobs: int, tokens: int, batch: int) -> float:
    """Jobs per second of ``generate`` alone at ``batch``, after one warm-up pass."""

    backend = TransformersBackend(model)
    backend.load("cpu")
    requests = [
        GenerationRequest(
            image=Image.open(io.BytesIO(make_image(i, size=(224, 168)))).convert("RGB"),
            prompt=PROMPTS[i % len(PROMPTS)],
            options=GenerationOptions(max_new_tokens=tokens),
        )
        for i in range(jobs)
    ]
    backend.generate(requests[:batch])
    started = time.perf_counter()
    for start in range(0, jobs, batch):
        backend.generate(requests[start : start + batch])
    elapsed = time.perf_counter() - started
    print(f"  (bare, batch {batch}: mean forward pass {1000 * elapsed * batch / jobs:.0f} ms)")
    return jobs / elapsed


def system(
    stack: Stack, jobs: int, tokens: int, batch: int, *, one_request: bool = True
) -> tuple[float, dict[int, int]]:
    """Jobs per second through HTTP → worker → database, and the batch sizes seen. The
    jobs go in as one ``POST /v1/batches`` (how a caller with many jobs sends them) or,
    with ``one_request`` False, as one ``POST /v1/jobs`` each."""
    stack.reset()
    stack.start_worker(max_batch_size=str(batch))
    client = stack.client()
    images = [make_image(i, size=(224, 168)) for i in range(jobs)]
    fields = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": tokens} for i in range(jobs)]
    first = datetime.now().astimezone()
    if one_request:
        answer = client.batch([{"image": images[i], **fields[i]} for i in range(jobs)])
        ids = [item["id"] for item in answer["accepted"]]
    else:
        ids = [client.submit(images[i], **fields[i])["id"] for i in range(jobs)]
    done = [client.wait(job_id, timeout_s=600, poll_s=0.5) for job_id in ids]
    stack.stop_workers()
    passes = [j["inference_ms"] for j in done if j["batch_size"] == batch and j["inference_ms"]]
    if passes:
        print(
            f"  (system, batch {batch}: median forward pass {sorted(passes)[len(passes) // 2]} ms)"
        )
    assert all(job["status"] == "succeeded" for job in done), "every job must succeed"
    last = max(datetime.fromisoformat(job["finished_at"]) for job in done)
    sizes: dict[int, int] = {}
    for job in done:
        sizes[job["batch_size"]] = sizes.get(job["batch_size"], 0) + 1
    return jobs / (last - first).total_seconds(), dict(sorted(sizes.items()))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=192)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    model = checkpoint("medium")
    with running_stack(model) as stack:
        bare_1 = bare_model(model, args.jobs // 4, args.tokens, batch=1)
        bare_8 = bare_model(model, args.jobs, args.tokens, batch=8)
        # The API sends a batch's wake-ups one per SIGHTLINE_MAX_BATCH_SIZE (8 here) jobs;
        # a worker at batch 1 would leave 7 in 8 to the sweeper, so these go in singly.
        system_1, sizes_1 = system(stack, args.jobs // 4, args.tokens, batch=1, one_request=False)
        system_8, sizes_8 = system(stack, args.jobs, args.tokens, batch=8)
        singly_8, _ = system(stack, args.jobs, args.tokens, batch=8, one_request=False)
        database = stack.settings.database_url

    database_kind = database.split(":", 1)[0]
    print(f"\nbatching benchmark: medium GLM-4V, {args.tokens} new tokens, CPU, {database_kind}")
    print(f"  bare model   batch 1: {bare_1:6.2f} jobs/s")
    print(f"  bare model   batch 8: {bare_8:6.2f} jobs/s   ({bare_8 / bare_1:.2f}x batch 1)")
    print(f"  system       batch 1: {system_1:6.2f} jobs/s   batch sizes {sizes_1}")
    print(f"  system       batch 8: {system_8:6.2f} jobs/s   batch sizes {sizes_8}")
    print(f"  system       batch 8: {singly_8:6.2f} jobs/s   (one POST /v1/jobs per job)")
    print(f"  system@8 / bare@8   = {system_8 / bare_8:.2f}   (target >= 0.9)")
    print(
        f"  same, one POST/job  = {singly_8 / bare_8:.2f}   (intake shares the CPU with the model)"
    )
    print(f"  system@8 / system@1 = {system_8 / system_1:.2f}   (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
