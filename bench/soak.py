"""``make soak``: the API under a steady mix for a long time, with locust (headless).

Starts the namespace cluster of ``tests/cluster/`` (root only: PostgreSQL, Redis and the
S3 server, the API under gunicorn, two CPU workers on the tiny checkpoint, ops and beat,
each on its own host), runs ``bench/locustfile.py`` against the API for ``--duration``
seconds (``SOAK_S``, default 600) and prints throughput, p50/p99 per route, errors by
status, the RSS of every sightline process at the start, after the warm-up and at the
end, and the jobs by status. Exits 1 when a process grew by more than 10 % after the
warm-up or any request answered 5xx.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.cluster import Cluster  # noqa: E402

SIGHTLINE = ("api", "w1", "w2", "ops", "beat")
MAX_GROWTH = 0.10


def _stats(prefix: str) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as stats:
        return list(csv.DictReader(stats))


def _failures(prefix: str) -> list[dict[str, str]]:
    with open(f"{prefix}_failures.csv", newline="") as failures:
        return list(csv.DictReader(failures))


def _rss(cluster: Cluster) -> dict[str, int]:
    return {k: v for k, v in cluster.sightline_rss().items() if k in SIGHTLINE}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/soak.py")
    parser.add_argument("--duration", type=int, default=int(os.environ.get("SOAK_S", "600")))
    parser.add_argument("--users", type=int, default=int(os.environ.get("SOAK_USERS", "10")))
    parser.add_argument("--warmup", type=int, default=60, help="seconds before the first RSS")
    args = parser.parse_args()
    from worker.model.tiny import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="sightline-soak-") as scratch:
        model = Path(scratch) / "tiny"
        build_tiny_checkpoint(model, size="tiny", seed=0)
        with Cluster(model) as cluster:
            prefix = str(Path(scratch) / "locust")
            command = [
                *(sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py")),
                *("--headless", "--users", str(args.users), "--spawn-rate", "5"),
                *("--run-time", f"{args.duration}s", "--host", cluster.url, "--csv", prefix),
                "--only-summary",
            ]
            start = _rss(cluster)
            locust = subprocess.Popen(command, env={**os.environ, "SOAK_KEY": cluster.key})
            time.sleep(min(args.warmup, args.duration / 2))
            warm = _rss(cluster)
            locust.wait()
            end = _rss(cluster)
            jobs = dict(cluster.sql("SELECT status::text, count(*) FROM jobs GROUP BY 1"))
            print(f"jobs by status at the end: {jobs} ({_per_s(jobs, args.duration)})")
            return _report(prefix, args.duration, start, warm, end)


def _per_s(jobs: dict[str, int], duration: int) -> str:
    return f"{jobs.get('succeeded', 0) / duration:.1f} succeeded per second"


def _report(
    prefix: str, duration: int, start: dict[str, int], warm: dict[str, int], end: dict[str, int]
) -> int:
    print(f"\nsoak: {duration} s")
    print(f"{'route':<22}{'requests':>10}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'fails':>7}")
    for row in _stats(prefix):
        print(
            f"{row['Name']:<22}{row['Request Count']:>10}{float(row['Requests/s']):>8.1f}"
            f"{row['50%']:>8}{row['99%']:>8}{row['Failure Count']:>7}"
        )
    server_errors = 0
    for failure in _failures(prefix):
        print(
            f"error: {failure['Method']} {failure['Name']}: {failure['Error']} "
            f"x{failure['Occurrences']}"
        )
        if "HTTPError('5" in failure["Error"] or "status code: 5" in failure["Error"].lower():
            server_errors += int(failure["Occurrences"])
    failed = server_errors > 0
    print(f"\n{'process':<8}{'RSS start MiB':>14}{'warm MiB':>10}{'end MiB':>9}{'growth':>8}")
    for name in SIGHTLINE:
        if name not in warm or name not in end:
            print(f"{name:<8} gone")
            failed = True
            continue
        growth = end[name] / warm[name] - 1
        failed |= growth > MAX_GROWTH
        mib = [rss.get(name, 0) / 2**20 for rss in (start, warm, end)]
        print(f"{name:<8}{mib[0]:>14.0f}{mib[1]:>10.0f}{mib[2]:>9.0f}{growth:>8.1%}")
    print("soak FAILED" if failed else "soak passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
