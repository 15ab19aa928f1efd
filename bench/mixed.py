"""Continuous batching on real traffic: long-tailed answer lengths and interactive jobs.

Measured side by side in one run, on the medium random GLM-4V checkpoint (the CPU
stand-in for a real model), through the whole system (HTTP → worker → PostgreSQL) with
``SIGHTLINE_MAX_BATCH_SIZE`` 8:

* **mixed ÷ uniform**: tokens per second of a long-tailed mix of ``max_new_tokens``
  (70 % under 16, 12 % over 100, mean about 31; one mix per seed) against a
  uniform workload of the same job count at the mix's mean, uniform and mixed runs
  taking turns. Target ≥ 0.8: a row that ends early makes room for the next job at once
  instead of idling until its batch's longest row ends.
* **mixed ÷ bare static**: the same mixes through plain ``generate`` in a process of its
  own (batches of 8 in arrival order, each running to its longest row, as static
  batching must: the rows of one ``generate`` share their options). Target ≥ 2.
* **interactive latency under load**: a worker full of bulk jobs of 128 or more tokens
  gets a short interactive job once a second; its worst latency (submission to
  ``finished_at``) against the same job's median latency on an idle worker. Target ≤ 3.

Then, in a process of its own, the engine's prefill and step costs, and from them the most
any scheduler could gain over static batches on each mix (every step full, every prefill
in groups of 8, no tail): how far the continuous batch is from its bound. Each system
run also prints the rows it held on average and its tail (from the last
claim to the end). Tokens are each job's ``output_tokens`` (the medium checkpoint
writes every token it is allowed, so they equal ``max_new_tokens``); a run's time goes
from its first submission to its last ``finished_at``. The machine's speed drifts, so
every ratio is also printed per round.

With ``--group-against N`` each round also runs the mix with ``SIGHTLINE_PREFILL_GROUP``
N (the three runs of a round in rotating order) and prints its throughput against the
default group's and against uniform work.

Each run is one submission of ``--jobs`` jobs (432 by default). Once its queue is empty
the last long answers run in a nearly empty batch, which no scheduler can fill: that
tail lasts about as long as the longest answer (3-5 s here), so it is a fifth of a run
of 144 jobs and about a fifteenth of a run of 432, closer to the submissions of
thousands this service is for. Every run prints its tail.

    python bench/mixed.py [--jobs 432] [--seeds 1 2 3] [--interactive 6] [--group-against 8]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any, TypedDict

from harness import checkpoint, running_stack
from PIL import Image

from shared.settings import Settings
from tests.stack import Stack, make_image
from worker.model.base import GenerationOptions, GenerationRequest
from worker.process import load_backend

SIZE = (224, 168)
PROMPTS = ["Describe this image.", "What colour is the shape?", "Is this safe?", "Caption it."]
BATCH = "8"


class Probe(TypedDict):
    """The fields of an interactive job, beside its image."""

    prompt: str
    max_new_tokens: int
    cache: bool


def long_tailed(jobs: int, seed: int) -> list[int]:
    """``max_new_tokens`` per job: 70 % in 4-15, 18 % in 16-64, 12 % in 100-180 (mean
    about 31), shuffled."""
    rng = random.Random(seed)
    long = max(1, round(jobs * 0.12))
    middle = round(jobs * 0.18)
    tokens = [rng.randint(100, 180) for _ in range(long)]
    tokens += [rng.randint(16, 64) for _ in range(middle)]
    tokens += [rng.randint(4, 15) for _ in range(jobs - long - middle)]
    rng.shuffle(tokens)
    return tokens


def system_run(stack: Stack, tokens: list[int], **worker: str) -> float:
    """Tokens per second of one bulk batch with these ``max_new_tokens``, through HTTP,
    a worker (``worker``: settings of its own) and the database; every job must succeed
    with exactly its tokens."""
    stack.reset()
    stack.start_worker(max_batch_size=BATCH, **worker)
    client = stack.client()
    items = [
        {
            "image": make_image(i, size=SIZE),
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_new_tokens": count,
        }
        for i, count in enumerate(tokens)
    ]
    first = datetime.now().astimezone()
    answer = client.batch(items)
    client.wait_batch(answer["id"], timeout_s=1800, poll_s=0.5)
    done = [client.get(item["id"]) for item in answer["accepted"]]
    stack.stop_workers()
    assert [job["output_tokens"] for job in done] == tokens, "every job writes its tokens"
    end = max(_finished(job) for job in done)
    seconds = (end - first).total_seconds()
    label = "uniform" if len(set(tokens)) == 1 else "mixed"
    _print_occupancy(done, end, label=" ".join([label, *map("=".join, worker.items())]))
    return sum(tokens) / seconds


def _print_occupancy(done: list[dict[str, Any]], end: datetime, *, label: str) -> None:
    """Where a run's time went: rows held on average from the first claim to the end
    (a row counts from its claim, prefill included, to its commit), and the tail from
    the last claim to the end, when no queued job is left to fill rows that end."""
    starts = [datetime.fromisoformat(job["started_at"]) for job in done]
    span = (end - min(starts)).total_seconds()
    held = sum(
        (_finished(job) - start).total_seconds() for job, start in zip(done, starts, strict=True)
    )
    tail = (end - max(starts)).total_seconds()
    print(
        f"    {label}: {held / span:.1f} of {BATCH} rows held on average;"
        f" {tail:.1f} s of {span:.1f} s after the last claim",
        flush=True,
    )


def bare_static(tokens: list[int]) -> float:
    """Tokens per second of plain ``generate`` over these jobs in a fresh process (see
    :func:`time_static`)."""
    command = [sys.executable, __file__, "--bare", *map(str, tokens)]
    answer = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return sum(tokens) / float(answer.stdout.split()[-1])


def time_static(tokens: list[int]) -> float:
    """Seconds ``generate`` takes over jobs with these ``max_new_tokens`` in batches of 8
    in arrival order, each at its longest job's cap, on a model loaded and warmed up as
    a worker does it."""
    backend, _ = load_backend(
        Settings(model_path=str(checkpoint("medium")), max_batch_size=int(BATCH)), "cpu"
    )
    requests = [
        GenerationRequest(
            image=Image.open(io.BytesIO(make_image(i, size=SIZE))).convert("RGB"),
            prompt=PROMPTS[i % len(PROMPTS)],
            options=GenerationOptions(max_new_tokens=count),
        )
        for i, count in enumerate(tokens)
    ]
    size = int(BATCH)
    started = time.perf_counter()
    for start in range(0, len(requests), size):
        group = requests[start : start + size]
        longest = GenerationOptions(max_new_tokens=max(r.options.max_new_tokens for r in group))
        backend.generate([_with(request, longest) for request in group])
    return time.perf_counter() - started


def _with(request: GenerationRequest, options: GenerationOptions) -> GenerationRequest:
    return GenerationRequest(request.image, request.prompt, options)


def interactive_latency(stack: Stack, count: int) -> tuple[float, list[float]]:
    """The median latency of a short interactive job on an idle worker, and each one's
    latency while the worker is full of long bulk jobs (one submitted per second)."""
    stack.reset()
    stack.start_worker(max_batch_size=BATCH)
    client = stack.client()
    probe: Probe = {"prompt": "Is this safe?", "max_new_tokens": 8, "cache": False}
    idle = [_latency(client.wait(client.submit(make_image(900), **probe)["id"])) for _ in range(5)]
    bulk = [
        {"image": make_image(i, size=SIZE), "prompt": "Describe.", "max_new_tokens": 128 + i}
        for i in range(4 * int(BATCH))
    ]
    answer = client.batch(bulk)
    time.sleep(2.0)  # the batch fills with bulk rows
    ids = []
    for _ in range(count):
        ids.append(client.submit(make_image(900), **probe)["id"])
        time.sleep(1.0)
    busy = [_latency(client.wait(job_id, timeout_s=600)) for job_id in ids]
    running = [client.get(item["id"])["status"] for item in answer["accepted"]]
    assert running.count("succeeded") < len(running), "bulk work was still running"
    stack.stop_workers()
    return statistics.median(idle[2:]), busy  # the first two warm the path up


def engine_costs() -> dict[str, float]:
    """Seconds the engine takes, in a fresh process (see :func:`time_costs`)."""
    command = [sys.executable, __file__, "--costs"]
    answer = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    costs: dict[str, float] = json.loads(answer.stdout.splitlines()[-1])
    return costs


def time_costs() -> dict[str, float]:
    """Median seconds of the engine's prefill of N = 1, 2, 4 and 8 rows joining an empty
    batch (``prefill_N``) and of a decoding step of those N rows (``decode_N``), on a
    model loaded and warmed up as a worker does it."""
    _, engine = load_backend(
        Settings(model_path=str(checkpoint("medium")), max_batch_size=int(BATCH)), "cpu"
    )
    costs = {}
    for rows in (1, 2, 4, 8):
        prefills, steps = [], []
        for round_ in range(5):
            for i in range(rows):
                image = Image.open(io.BytesIO(make_image(100 * round_ + i, size=SIZE)))
                request = GenerationRequest(
                    image.convert("RGB"), PROMPTS[i % len(PROMPTS)], GenerationOptions(32)
                )
                engine.add(uuid.uuid4(), request)
            started = time.perf_counter()
            engine.step()
            prefills.append(time.perf_counter() - started)
            while engine.running:
                started = time.perf_counter()
                engine.step()
                steps.append(time.perf_counter() - started)
        costs[f"prefill_{rows}"] = statistics.median(prefills)
        costs[f"decode_{rows}"] = statistics.median(steps)
    return costs


def ceiling(tokens: list[int], costs: dict[str, float]) -> float:
    """The most any scheduler could gain over static batches of 8 on these jobs at the
    engine's own ``costs``: static batches (prefill of 8, then steps to the longest row)
    against every prefill in groups of 8 and every step full, with no tail."""
    size = int(BATCH)
    groups = [tokens[start : start + size] for start in range(0, len(tokens), size)]
    static = sum(costs["prefill_8"] + (max(group) - 1) * costs["decode_8"] for group in groups)
    best = len(tokens) / size * costs["prefill_8"]
    best += (sum(tokens) - len(tokens)) / size * costs["decode_8"]
    return static / best


def _latency(job: dict[str, Any]) -> float:
    assert job["status"] == "succeeded", job
    return (_finished(job) - datetime.fromisoformat(job["created_at"])).total_seconds()


def _finished(job: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(job["finished_at"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=432)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--interactive", type=int, default=6)
    parser.add_argument("--group-against", type=int, help="a prefill group to compare")
    parser.add_argument("--bare", type=int, nargs="+", help=argparse.SUPPRESS)  # time_static
    parser.add_argument("--costs", action="store_true", help=argparse.SUPPRESS)  # time_costs
    args = parser.parse_args()
    if args.bare:
        print(time_static(args.bare))
        return 0
    if args.costs:
        print(json.dumps(time_costs()))
        return 0
    mixes = {seed: long_tailed(args.jobs, seed) for seed in args.seeds}
    rows = []
    others: list[float] = []  # the mix's tokens/s with --group-against's group
    with running_stack(checkpoint("medium")) as stack:
        for round_, (seed, tokens) in enumerate(mixes.items()):
            mean = round(statistics.mean(tokens))
            uniform = [mean] * len(tokens)
            runs: dict[str, tuple[list[int], dict[str, str]]] = {
                "uniform": (uniform, {}),
                "mixed": (tokens, {}),
            }
            if args.group_against:
                runs["other"] = (tokens, {"prefill_group": str(args.group_against)})
            # Taking turns to go first, so drift does not favour one side.
            order = list(runs)[round_ % len(runs) :] + list(runs)[: round_ % len(runs)]
            seen = {name: system_run(stack, runs[name][0], **runs[name][1]) for name in order}
            flat, mixed = seen["uniform"], seen["mixed"]
            static = bare_static(tokens)
            rows.append((seed, tokens, mean, flat, mixed, static))
            others.append(seen.get("other", 0.0))
            print(
                f"  seed {seed}: uniform {flat:6.1f} tok/s, mixed {mixed:6.1f} tok/s,"
                f" bare static mixed {static:6.1f} tok/s"
                + (f", mixed in other groups {others[-1]:6.1f} tok/s" if others[-1] else ""),
                flush=True,
            )
        idle, busy = interactive_latency(stack, args.interactive)
    costs = engine_costs()

    print(
        f"\nmixed benchmark: medium GLM-4V, CPU, max batch {BATCH}, {args.jobs} jobs per run,"
        f" {datetime.now():%Y-%m-%d}"
    )
    print("  seed  mean  max   uniform   mixed  bare static   mixed/uniform  mixed/static")
    for seed, tokens, mean, flat, mixed, static in rows:
        print(
            f"  {seed:4d} {mean:5d} {max(tokens):4d} {flat:9.1f} {mixed:7.1f} {static:12.1f}"
            f" {mixed / flat:15.2f} {mixed / static:13.2f}"
        )
    flat_all = statistics.fmean(row[3] for row in rows)
    mixed_all = statistics.fmean(row[4] for row in rows)
    static_all = statistics.fmean(row[5] for row in rows)
    print(f"  mixed / uniform      = {mixed_all / flat_all:.2f}   (target >= 0.8)")
    print(f"  mixed / bare static  = {mixed_all / static_all:.2f}   (target >= 2)")
    if args.group_against:
        other_all = statistics.fmean(others)
        print(
            f"  prefill group {args.group_against}: mixed / uniform = {other_all / flat_all:.2f},"
            f" against the default group's mixed = {other_all / mixed_all:.2f} ("
            + ", ".join(f"{o / row[4]:.2f}" for o, row in zip(others, rows, strict=True))
            + ")"
        )
    worst = max(busy)
    print(
        f"  interactive latency: idle {idle:.2f} s; under bulk load "
        + ", ".join(f"{s:.2f}" for s in busy)
        + " s"
    )
    print(f"  worst under load / idle = {worst / idle:.2f}   (target <= 3)")
    print(
        "  engine alone: prefill per row "
        + " / ".join(f"{costs[f'prefill_{n}'] / n * 1000:.0f}" for n in (1, 2, 4, 8))
        + " ms joining in groups of 1 / 2 / 4 / 8; decoding step "
        + " / ".join(f"{costs[f'decode_{n}'] * 1000:.0f}" for n in (1, 2, 4, 8))
        + " ms at 1 / 2 / 4 / 8 rows"
    )
    print(
        "  the most any scheduler could gain over static batches at these costs (every"
        " step full, every prefill in 8s, no tail): "
        + " / ".join(f"{ceiling(tokens, costs):.2f}" for _, tokens, *_ in rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
