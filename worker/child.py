"""``python -m worker.child --device D --node NAME``: one pinned worker process.

The launcher starts one of these per device; it can also be run by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys

from shared.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.child")
    parser.add_argument("--device", required=True, help="'cpu' or a GPU index")
    parser.add_argument("--node", required=True, help="Celery node name, e.g. gpu0@host")
    parser.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        help="file descriptor to write one byte to once consuming (used by the launcher)",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from worker.predecessor import free_predecessor_jobs
    from worker.process import run_worker

    free_predecessor_jobs(settings, args.node)
    return run_worker(settings, args.device, args.node, ready_fd=args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
