"""A thousand open event streams beside ordinary traffic, on this machine.

Measured side by side in one run, rounds taking turns, through the whole system (the API
as ``sightline api`` runs it, a worker on the tiny checkpoint with room for every job at
once, PostgreSQL, Redis):

* a **workload**: ``--jobs`` bulk jobs (one batch) of ``--tokens`` ÷ 2 to ``--tokens``
  new tokens each (drawn with a fixed seed, the same in every round), all running
  together, while a prober (a process of its own) submits one interactive
  ``POST /v1/jobs`` every ``PROBE_S`` and times each answer. The lengths differ as a
  real model's answers do (each stops at its end token; the random checkpoint never
  writes one, so it is told where to stop): fifty answers of one length would all end
  in the same step, and their thousand streams close in the same instant, a burst real
  traffic does not make;
* **with streams**: the same, plus ``--watchers`` event streams per job (50 × 20 = 1,000
  by default), read by one asyncio client (aiohttp) in this process; every stream must
  end with ``done`` and its answer deltas must spell the job's result. The client keeps
  each stream's bytes and reads its events once the round is over: it shares the two
  cores with what it measures, and a real reader would run elsewhere.

The worker's torch runs on one thread (``OMP_NUM_THREADS=1``), in both rounds alike: with
torch's default of one per core, its threads wait for each other whenever the API, the
database or this client takes one of the two cores, and the worker ran slower in every
round, streams or not (docs/benchmarks.md).

The batch is accepted before any worker runs; in the round with streams, every stream is
opened and has had its first (``queued``) event before the worker starts, so what is
measured is a thousand open streams following running jobs, not a thousand connections
arriving at once (how long opening them took is printed apart). The prober and the
measured window start then (``SETTLE_S`` after the last stream's first event), in both
rounds alike.

Printed: POST p50/p99 with ÷ without streams (target p99 ratio ≤ 2), worker throughput
(tokens of the batch per second, first start to last finish) with ÷ without (target
≥ 0.9), streams complete and correct. Then, on an idle worker, an interactive job's time
to its first delta against its total latency (submission to ``done``), median of
``--latency-runs``.

With ``--worker-core N`` the worker runs alone on CPU ``N`` and the API, Redis and this
client on the others (a database server that this script does not start is left where
it is): what streams cost the worker itself, apart from what they take of the cores.

    python bench/streams.py [--jobs 50] [--watchers 20] [--tokens 1000] [--rounds 4]
                            [--worker-core N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import aiohttp
import requests
from harness import checkpoint, running_stack

from client.sse import EventStreamDecoder
from tests.stack import Stack, make_image

PROBE_S = 0.1
# After the last stream's first event, its opening still has work under way (its place in
# the queue, its replay hash, its slot): the measured window starts once that is done.
SETTLE_S = 1.0
SETTINGS = {
    "OMP_NUM_THREADS": "1",  # see the module docstring
    "SIGHTLINE_STREAMS_PER_TENANT": "5000",
    "SIGHTLINE_STREAM_HEARTBEAT_S": "15",
    "SIGHTLINE_RATE_LIMIT": "0/1",
}


@dataclass
class Watched:
    """What one stream received: its bytes as they came (``raw``), then, once
    :meth:`parse` has read them, its answer and its ``done``."""

    raw: bytes = b""
    answer: str = ""
    deltas: int = 0  # answer deltas
    done: dict[str, Any] | None = None
    first_delta_at: float | None = None  # when the bytes of its first delta came
    error: str | None = None

    def parse(self) -> None:
        """Read the events in ``raw`` (``client.sse``): the answer's deltas (a ``reset``
        starts it over) and the final ``done``."""
        for event in EventStreamDecoder().feed(self.raw):
            body = json.loads(event.data)
            if event.type == "reset":
                self.answer = ""
            elif event.type == "delta" and body["part"] == "answer":
                self.deltas += 1
                self.answer += body["text"]
            elif event.type == "done":
                self.done = body
        self.raw = b""


@dataclass
class Round:
    """One run of the workload."""

    streams: bool
    posts: list[tuple[float, float]] = field(default_factory=list)  # (sent at, ms)
    worker_at: float = 0.0  # when the worker was started
    tokens_per_s: float = 0.0
    open_s: float = 0.0

    @property
    def post_ms(self) -> list[float]:
        return [ms for _, ms in self.posts]

    watched: list[tuple[str, Watched]] = field(default_factory=list)


async def watch(
    session: aiohttp.ClientSession, url: str, key: str, seen: Watched, opened: Callable[[], None]
) -> None:
    """Read one job's stream to its end, keeping its bytes in ``seen`` for
    :meth:`Watched.parse` (the events are read after the round, so that this client,
    which shares the cores with what it measures, does little more than the reads
    while it runs); ``opened`` is called at its first event (or as it fails)."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    first = True
    chunks: list[bytes] = []
    try:
        async with session.get(url, headers=headers) as response:
            if response.status != 200:
                seen.error = f"HTTP {response.status}: {await response.text()}"
                return
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                if not first and seen.first_delta_at is not None:
                    continue
                tail = b"".join(chunks[-2:])  # a name cut between two chunks
                if first and b"event:" in tail:
                    first = False
                    opened()
                if seen.first_delta_at is None and b"event: delta" in tail:
                    seen.first_delta_at = time.monotonic()
    except (TimeoutError, aiohttp.ClientError) as exc:
        seen.error = repr(exc)
    finally:
        seen.raw = b"".join(chunks)
        if first:
            opened()


async def watch_all(
    stack: Stack, watched: list[tuple[str, Watched]], all_open: threading.Event | None = None
) -> None:
    """Read every stream of ``watched`` to its end; ``all_open`` is set once each has had
    its first event."""
    waiting = len(watched)

    def opened() -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0 and all_open is not None:
            all_open.set()

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            *(
                watch(session, f"{stack.url}/v1/jobs/{job_id}/events", stack.key, seen, opened)
                for job_id, seen in watched
            )
        )


def probe(url: str, key: str, stop: EventType, answers: Connection) -> None:
    """One interactive POST every PROBE_S until ``stop``, in a process of its own (see
    :func:`start_prober`); sends the list of (when each was sent, ``time.monotonic()``,
    and its answer's time in ms) through ``answers`` at the end."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    took_ms: list[tuple[float, float]] = []
    count = 0
    while not stop.wait(PROBE_S):
        count += 1
        started = time.monotonic()
        answer = session.post(
            f"{url}/v1/jobs",
            files={"image": ("p.png", make_image(100_000 + count))},
            data={"prompt": "probe", "max_new_tokens": "1"},
            timeout=60,
        )
        took_ms.append((started, (time.monotonic() - started) * 1000))
        assert answer.status_code == 202, answer.text
    answers.send(took_ms)


@contextmanager
def start_prober(stack: Stack, posts: list[tuple[float, float]]) -> Iterator[None]:
    """Run :func:`probe` in a process of its own while the block runs, then put its
    timings in ``posts``. Not a thread of this process: the stream reader's thread parses
    a thousand events at a burst, and a prober waiting for the GIL meanwhile would time
    this process, not the API (``time.monotonic()`` is the same clock in both)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receiving, sending = context.Pipe(duplex=False)
    prober = context.Process(target=probe, args=(stack.url, stack.key, stop, sending))
    prober.start()
    try:
        yield
    finally:
        stop.set()
        if not receiving.poll(120):
            prober.kill()
            raise RuntimeError(f"the prober sent no timings (exit code {prober.exitcode})")
        posts.extend(receiving.recv())
        prober.join()


def workload(stack: Stack, args: argparse.Namespace, streams: bool) -> Round:
    stack.reset()
    result = Round(streams)
    client = stack.client()
    items = [
        {"image": make_image(i), "prompt": f"describe #{i}", "max_new_tokens": tokens}
        for i, tokens in enumerate(lengths(args))
    ]
    job_ids = [str(item["id"]) for item in client.batch(items)["accepted"]]
    reader = None
    if streams:
        result.watched = [(job_id, Watched()) for job_id in job_ids for _ in range(args.watchers)]
        all_open = threading.Event()
        opening = time.monotonic()
        reader = threading.Thread(
            target=lambda: asyncio.run(watch_all(stack, result.watched, all_open))
        )
        reader.start()
        assert all_open.wait(600), "the streams did not all open"
        result.open_s = time.monotonic() - opening
        time.sleep(SETTLE_S)
    with start_prober(stack, result.posts):
        time.sleep(2)  # a few probes before the worker starts, in both rounds alike
        result.worker_at = time.monotonic()
        worker = stack.start_worker(max_batch_size=str(args.jobs + 8))
        if args.worker_core is not None:
            pin(worker.pid, {args.worker_core})
        jobs = stack.wait_all(job_ids, timeout_s=1800)
    if reader is not None:
        reader.join()
    started = min(_time(job["started_at"]) for job in jobs)
    finished = max(_time(job["finished_at"]) for job in jobs)
    tokens = sum(job["output_tokens"] for job in jobs)
    result.tokens_per_s = tokens / (finished - started).total_seconds()
    results = {job["id"]: job["result"] for job in jobs}
    for job_id, seen in result.watched:
        seen.parse()
        seen.error = seen.error or _mismatch(seen, results[job_id])
    return result


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of its descendants onto ``cpus`` (threads started later
    inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)
        for child in (task / "children").read_text().split():
            pin(int(child), cpus)


def lengths(args: argparse.Namespace) -> list[int]:
    """Each job's ``max_new_tokens`` (see the module docstring)."""
    draw = random.Random(0)
    return [draw.randint(args.tokens // 2, args.tokens) for _ in range(args.jobs)]


def _mismatch(seen: Watched, result: str) -> str | None:
    """Why a stream's text is wrong, if it is: its deltas must spell the result, except
    on a stream opened once the job had ended, which is one ``done`` carrying it."""
    if seen.done is None:
        return "no done event"
    if not seen.deltas:
        return None if seen.done["result"] == result else "done without the result"
    return None if seen.answer == result else f"deltas {seen.answer!r} != result {result!r}"


def first_delta(stack: Stack, tokens: int) -> tuple[float, float]:
    """An interactive job on an idle worker: seconds to its first delta and to done."""
    client = stack.client()
    started = time.monotonic()
    # cache=False: a repeated request would be answered from the result cache (no model).
    job_id = client.submit(make_image(7), "first delta", max_new_tokens=tokens, cache=False)["id"]
    seen = Watched()
    asyncio.run(watch_all(stack, [(job_id, seen)]))
    seen.parse()
    assert seen.done is not None and seen.first_delta_at is not None, seen.error
    return seen.first_delta_at - started, time.monotonic() - started


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument(
        "--worker-core",
        type=int,
        help="run the worker on this CPU and everything this script starts on the others "
        "(to tell the streams' cost to the worker itself from their share of the cores)",
    )
    args = parser.parse_args()
    if args.worker_core is not None:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {args.worker_core})
    print(
        f"{args.jobs} jobs × {args.tokens // 2}-{args.tokens} tokens, "
        f"{args.jobs * args.watchers} streams, "
        f"tiny checkpoint, {time.strftime('%Y-%m-%d')}"
        + ("" if args.worker_core is None else f", the worker alone on CPU {args.worker_core}")
    )
    with running_stack(checkpoint("tiny"), SETTINGS) as stack:
        rounds: list[Round] = []
        for number in range(args.rounds):
            for streams in (False, True):
                done = workload(stack, args, streams)
                bad = [seen.error for _, seen in done.watched if seen.error]
                print(
                    f"round {number + 1} {'with' if streams else 'without'} streams: "
                    f"{done.tokens_per_s:.0f} tok/s, POST p50 {_p(done.post_ms, 50):.0f} ms "
                    f"p99 {_p(done.post_ms, 99):.0f} ms ({len(done.post_ms)} posts; slowest "
                    + ", ".join(
                        f"{ms:.0f} ms at {at - done.worker_at:+.1f} s"
                        for at, ms in sorted(done.posts, key=lambda post: -post[1])[:3]
                    )
                    + " from the worker's start)"
                    + (
                        f", {len(done.watched) - len(bad)}/{len(done.watched)} streams right"
                        f" (opened in {done.open_s:.1f} s)"
                        if streams
                        else ""
                    )
                )
                for error in bad[:3]:
                    print(f"  stream error: {error}")
                rounds.append(done)
        without = [r for r in rounds if not r.streams]
        with_ = [r for r in rounds if r.streams]
        p99_with = _p([ms for r in with_ for ms in r.post_ms], 99)
        p99_without = _p([ms for r in without for ms in r.post_ms], 99)
        throughput = statistics.mean(r.tokens_per_s for r in with_) / statistics.mean(
            r.tokens_per_s for r in without
        )
        wrong = sum(1 for r in with_ for _, seen in r.watched if seen.error)
        total = sum(len(r.watched) for r in with_)
        print(f"POST p99 with ÷ without streams: {p99_with / p99_without:.2f} (target ≤ 2)")
        print(f"worker throughput with ÷ without streams: {throughput:.2f} (target ≥ 0.9)")
        print(f"streams ending in done with deltas = result: {total - wrong}/{total}")

        stack.reset()
        stack.start_worker()
        first_delta(stack, 8)  # warm-up
        runs = [first_delta(stack, 64) for _ in range(args.latency_runs)]
        first = statistics.median(run[0] for run in runs)
        total_s = statistics.median(run[1] for run in runs)
        print(
            f"idle worker, 64 tokens: first delta {first * 1000:.0f} ms, done "
            f"{total_s * 1000:.0f} ms: first delta ÷ total {first / total_s:.2f}"
        )
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
