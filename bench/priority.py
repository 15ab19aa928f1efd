"""Does a reviewer's question get through a moderation backlog quickly?

On the medium random GLM-4V checkpoint (the CPU stand-in): 5,000 bulk jobs are queued
in one batch and a worker starts on them; while it is busy, one interactive job is
submitted per second. Each interactive job's latency (created → finished, server clock)
is compared with one batch's inference time (median over the bulk batches of 8 that ran
meanwhile) plus ``SIGHTLINE_MAX_BATCH_WAIT_MS``. Prints the p95 latency over that sum
(target ≤ 3).

    python bench/priority.py [--bulk 5000] [--interactive 30]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from datetime import datetime

from harness import checkpoint, running_stack

from shared.models import JobStatus, Priority
from tests.stack import make_image

TOKENS = 16


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bulk", type=int, default=5000)
    parser.add_argument("--interactive", type=int, default=30)
    args = parser.parse_args()
    with running_stack(checkpoint("medium")) as stack:
        client = stack.client()
        image = base64.b64encode(make_image(1, size=(224, 168))).decode()
        items = [
            {"image": image, "prompt": f"bulk {i}", "max_new_tokens": TOKENS, "cache": False}
            for i in range(args.bulk)
        ]
        client.batch(items)
        stack.start_worker()
        while not any(job.status is JobStatus.SUCCEEDED for job in stack.jobs()):
            time.sleep(0.2)
        urgent = []
        for i in range(args.interactive):
            started = time.monotonic()
            urgent.append(client.submit(make_image(i), f"urgent {i}", max_new_tokens=TOKENS)["id"])
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        done = [client.wait(job_id, timeout_s=600) for job_id in urgent]
        rows = stack.jobs()
    latencies = sorted(
        (
            datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["created_at"])
        ).total_seconds()
        for j in done
    )
    p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)]
    batch_s = statistics.median(
        row.inference_ms / 1000
        for row in rows
        if row.priority is Priority.BULK and row.batch_size == 8 and row.inference_ms is not None
    )
    wait_s = stack.settings.max_batch_wait_ms / 1000
    finished_bulk = sum(
        1 for row in rows if row.priority is Priority.BULK and row.status is JobStatus.SUCCEEDED
    )
    print(f"\npriority benchmark: medium GLM-4V, {TOKENS} new tokens, {args.bulk} bulk jobs queued")
    print(f"  bulk jobs finished meanwhile: {finished_bulk}; one batch of 8: {batch_s:.3f} s")
    p50 = statistics.median(latencies)
    print(f"  interactive latency: p50 {p50:.3f} s, p95 {p95:.3f} s, max {latencies[-1]:.3f} s")
    print(f"  p95 / (batch inference + max wait) = {p95 / (batch_s + wait_s):.2f}   (target <= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
