"""Run the suite (or part of it) N times and print how often each test passed.

``make test-repeat N=5 [TESTS=tests/integration/test_webhooks.py] [ORDER=random]
[CONTENTION=1]``, or ``python -m tests.repeat --runs 5 [--random-order] [--contention]
[-- PYTEST ARGS]``. Each run is a fresh pytest process writing a JUnit XML report; the
table lists every test that did not pass every time first, then a count of those that
did. ``--random-order`` shuffles each run with pytest-randomly (a new seed per run,
printed); ``--contention`` keeps one core busy with a spinning process for the whole
time, as a noisy neighbour would. Exits 1 when any test failed at least once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def _spin() -> None:
    while True:
        pass


def _outcomes(report: Path) -> dict[str, str]:
    """Test id -> ``passed``, ``failed`` or ``skipped`` from one JUnit XML report."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many times (default 3)")
    parser.add_argument("--random-order", action="store_true", help="shuffle every run")
    parser.add_argument("--contention", action="store_true", help="keep one core busy")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (default: tests)")
    args = parser.parse_args(argv)

    spinner = None
    if args.contention:
        spinner = multiprocessing.Process(target=_spin, daemon=True)
        spinner.start()
    passes: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    failed_runs = 0
    try:
        with tempfile.TemporaryDirectory(prefix="sightline-repeat-") as scratch:
            for run in range(1, args.runs + 1):
                report = Path(scratch) / f"run-{run}.xml"
                order = ["-p", "no:randomly"]
                if args.random_order:
                    order = [f"--randomly-seed={random.randrange(2**32)}"]
                command = [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    *order,
                    f"--junitxml={report}",
                    *(args.pytest_args or ["tests"]),
                ]
                started = time.monotonic()
                code = subprocess.run(command, check=False).returncode
                took = time.monotonic() - started
                print(f"run {run}/{args.runs}: exit {code} in {took:.0f} s ({' '.join(order)})")
                failed_runs += code != 0
                for test_id, outcome in _outcomes(report).items():
                    seen[test_id] += 1
                    passes[test_id] += outcome != "failed"
    finally:
        if spinner is not None:
            spinner.kill()

    unsteady = sorted(test_id for test_id in seen if passes[test_id] < seen[test_id])
    print(f"\n{'passed':>8}  test")
    for test_id in unsteady:
        print(f"{passes[test_id]:>3} of {seen[test_id]:<2} {test_id}")
    print(f"{len(seen) - len(unsteady)} tests passed in every run; {len(unsteady)} did not.")
    print(f"{args.runs - failed_runs} of {args.runs} runs passed.")
    return 1 if unsteady or failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
