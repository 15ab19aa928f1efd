"""Does micro-batching pay, and does the system around the model keep up with it?

Measured side by side in one run, on the medium random GLM-4V checkpoint (the honest
CPU stand-in for a real model):

* bare model: ``generate`` at batch 1 and batch 8, in a process of its own that loads
  and warms the model as a worker does and is sent the same images and prompts;
* whole system: jobs submitted over HTTP to the API (gunicorn) in one ``POST
  /v1/batches``, claimed and run by a ``sightline worker`` process, results committed to
  PostgreSQL (SQLite when no server can be had) and read back over HTTP, with
  ``SIGHTLINE_MAX_BATCH_SIZE`` 8 (and 1, with one ``POST /v1/jobs`` per job); at batch
  8 also with one ``POST /v1/jobs`` per job. On a CPU machine the API's intake work
  shares the two cores with the model (on a GPU host it does not), so that variant shows
  what intake costs the model here.

Throughput is jobs per second; system time runs from the first submission to the last
``finished_at``. A shared machine's speed drifts by more than the gap measured here, so
the batch-8 pair runs in ``--rounds`` rounds, bare and system taking turns to go first,
and each side's throughput is over all its rounds. For each system run two shares of its
time are printed too: the engine's steps (the worker's ``sightline_worker_step_seconds``:
the forward passes, and preparing the joiners' inputs) and the jobs' time in the engine
(each job's ``inference_ms`` over the rows it shared its steps with: the steps plus the
worker's work between them). What the system costs apart from how fast the model ran
is the rest. Prints the ratios the issue sets targets for:
system@8 / bare@8 (≥ 0.9) and system@8 / system@1 (≥ 3).

    python bench/batching.py [--jobs 192] [--tokens 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from harness import checkpoint, running_stack
from PIL import Image

from shared.settings import Settings
from tests.prometheus import scrape, total
from tests.stack import Stack, make_image
from worker.model.base import GenerationOptions, GenerationRequest
from worker.process import load_backend

SIZE = (224, 168)
PROMPTS = ["Describe this image.", "What colour is the shape?", "Is this safe?", "Caption it."]


@dataclass
class Tally:
    """Jobs done and seconds taken, summed over runs, and each run's jobs per second."""

    jobs: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0
    engine_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)

    def add(self, jobs: int, seconds: float, step_seconds: float, engine_seconds: float) -> None:
        self.jobs += jobs
        self.seconds += seconds
        self.step_seconds += step_seconds
        self.engine_seconds += engine_seconds
        self.rates.append(jobs / seconds)

    @property
    def rate(self) -> float:
        """Jobs per second."""
        return self.jobs / self.seconds


def bare_model(jobs: int, tokens: int, batch: int, tally: Tally) -> None:
    """Time ``generate`` alone at ``batch`` in a fresh process, as a worker runs it:
    nothing in that process but the model and its inputs (see :func:`time_generate`)."""
    command = [sys.executable, __file__, "--jobs", str(jobs), "--tokens", str(tokens)]
    answer = subprocess.run(
        [*command, "--bare-batch", str(batch)], check=True, stdout=subprocess.PIPE, text=True
    )
    elapsed = float(answer.stdout.split()[-1])
    tally.add(jobs, elapsed, elapsed, elapsed)
    print(f"  bare   batch {batch}: {jobs / elapsed:6.2f} jobs/s")


def time_generate(jobs: int, tokens: int, batch: int) -> float:
    """Seconds ``generate`` takes over ``jobs`` requests at ``batch``: the images and
    prompts the system is sent, with the API's default for text answers (thinking on),
    on a model loaded and warmed up exactly as a worker does it (``load_backend``; a
    differently warmed model ran up to 20 % slower here)."""
    backend, _ = load_backend(
        Settings(model_path=str(checkpoint("medium")), max_batch_size=batch), "cpu"
    )
    requests = [
        GenerationRequest(
            image=Image.open(io.BytesIO(make_image(i, size=SIZE))).convert("RGB"),
            prompt=PROMPTS[i % len(PROMPTS)],
            options=GenerationOptions(max_new_tokens=tokens),
            thinking=True,
        )
        for i in range(jobs)
    ]
    started = time.perf_counter()
    for start in range(0, jobs, batch):
        backend.generate(requests[start : start + batch])
    return time.perf_counter() - started


class JobFields(TypedDict):
    """A job's fields beside its image."""

    prompt: str
    max_new_tokens: int


def system(
    stack: Stack, jobs: int, tokens: int, batch: int, tally: Tally, *, one_request: bool = True
) -> dict[int, int]:
    """Time jobs through HTTP → worker → database; returns the batch sizes seen. The
    jobs go in as one ``POST /v1/batches`` (how a caller with many jobs sends them, who
    then polls the batch) or, with ``one_request`` False, as one ``POST /v1/jobs`` each
    (each then long-polled)."""
    stack.reset()
    stack.start_worker(max_batch_size=str(batch))
    metrics = f"http://127.0.0.1:{stack.env['SIGHTLINE_WORKER_METRICS_PORT']}/metrics"
    steps_before = _step_seconds(metrics)
    client = stack.client()
    images = [make_image(i, size=SIZE) for i in range(jobs)]
    fields: list[JobFields] = [
        {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": tokens} for i in range(jobs)
    ]
    first = datetime.now().astimezone()
    if one_request:
        answer = client.batch([{"image": images[i], **fields[i]} for i in range(jobs)])
        client.wait_batch(answer["id"], timeout_s=600, poll_s=0.5)
        done = [client.get(item["id"]) for item in answer["accepted"]]
    else:
        ids = [client.submit(images[i], **fields[i])["id"] for i in range(jobs)]
        done = [client.wait(job_id, timeout_s=600, poll_s=0.5) for job_id in ids]
    step_seconds = _step_seconds(metrics) - steps_before
    stack.stop_workers()
    assert all(job["status"] == "succeeded" for job in done), "every job must succeed"
    seconds = (max(_finished(job) for job in done) - first).total_seconds()
    # Each job's time in the engine, shared with the rows of its steps.
    engine_seconds = sum(job["inference_ms"] / job["batch_size"] for job in done) / 1000
    tally.add(jobs, seconds, step_seconds, engine_seconds)
    sizes: dict[int, int] = {}
    for job in done:
        sizes[job["batch_size"]] = sizes.get(job["batch_size"], 0) + 1
    how = "one POST /v1/batches" if one_request else "one POST /v1/jobs per job"
    print(
        f"  system batch {batch}: {jobs / seconds:6.2f} jobs/s, engine steps"
        f" {step_seconds / seconds:4.0%} of the time, jobs in the engine"
        f" {engine_seconds / seconds:4.0%} ({how})"
    )
    return dict(sorted(sizes.items()))


def _step_seconds(metrics: str) -> float:
    """The time the worker serving ``metrics`` has spent in engine steps so far."""
    return total(scrape(metrics), "sightline_worker_step_seconds_sum")


def _finished(job: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(job["finished_at"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=192)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bare-batch", type=int, help=argparse.SUPPRESS)  # see bare_model
    args = parser.parse_args()
    if args.bare_batch:
        print(time_generate(args.jobs, args.tokens, args.bare_batch))
        return 0
    model = checkpoint("medium")
    bare_1, bare_8, system_1, system_8, singly_8 = (Tally() for _ in range(5))
    with running_stack(model) as stack:
        bare_model(args.jobs // 4, args.tokens, 1, bare_1)
        # The API sends a batch's wake-ups one per SIGHTLINE_MAX_BATCH_SIZE (8 here) jobs:
        # fewer than a worker at batch 1 needs once a wake-up's drain window
        # (worker.tasks.DRAIN_S) ends, which leaves jobs to the sweeper; so these go in
        # singly.
        sizes_1 = system(stack, args.jobs // 4, args.tokens, 1, system_1, one_request=False)
        sizes_8: dict[int, int] = {}
        for round_ in range(args.rounds):
            if round_ % 2 == 0:
                bare_model(args.jobs, args.tokens, 8, bare_8)
            sizes_8 = system(stack, args.jobs, args.tokens, 8, system_8)
            if round_ % 2 == 1:
                bare_model(args.jobs, args.tokens, 8, bare_8)
        system(stack, args.jobs, args.tokens, 8, singly_8, one_request=False)
        database = stack.settings.database_url

    database_kind = database.split(":", 1)[0]
    print(
        f"\nbatching benchmark: medium GLM-4V, {args.tokens} new tokens, CPU, {database_kind},"
        f" batch 8 over {args.rounds} alternating rounds"
    )
    print(f"  bare model   batch 1: {bare_1.rate:6.2f} jobs/s")
    gain = bare_8.rate / bare_1.rate
    print(f"  bare model   batch 8: {bare_8.rate:6.2f} jobs/s   ({gain:.2f}x batch 1)")
    print(f"  system       batch 1: {system_1.rate:6.2f} jobs/s   batch sizes {sizes_1}")
    print(f"  system       batch 8: {system_8.rate:6.2f} jobs/s   batch sizes {sizes_8}")
    print(f"  system       batch 8: {singly_8.rate:6.2f} jobs/s   (one POST /v1/jobs per job)")
    print(
        f"  engine steps in the system at batch 8: {system_8.step_seconds / system_8.seconds:.0%}"
        f" of its time; jobs in the engine {system_8.engine_seconds / system_8.seconds:.0%}"
        " (the rest is intake, claims, commits, polling)"
    )
    print(f"  system@8 / bare@8   = {system_8.rate / bare_8.rate:.2f}   (target >= 0.9)")
    rounds = ", ".join(f"{s / b:.2f}" for b, s in zip(bare_8.rates, system_8.rates, strict=True))
    print(f"    round by round: {rounds}   (the machine's drift)")
    print(
        f"  same, one POST/job  = {singly_8.rate / bare_8.rate:.2f}"
        "   (intake shares the CPU with the model)"
    )
    print(f"  system@8 / system@1 = {system_8.rate / system_1.rate:.2f}   (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
