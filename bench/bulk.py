"""How fast does sightline accept work? Bulk batches and single jobs, in one run.

* bulk: one ``POST /v1/batches`` of 10,000 items, each a distinct ~7 KB PNG sent as
  ~10 KB of base64 — every item decoded, validated, normalised and stored, rows inserted
  in chunks of 2,000, wake-ups sent in bulk. Reports accepted items per second
  (target ≥ 2,000/s on 2 cores);
* single: ``POST /v1/jobs`` (multipart) from 8 concurrent clients through gunicorn.
  Reports jobs per second (target ≥ 300/s).

No worker runs: this measures the door, not the model.

    python bench/bulk.py [--items 10000] [--single 1200]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from harness import checkpoint, running_stack
from PIL import Image


def noisy_png(side: int = 48) -> bytes:
    """A distinct, incompressible PNG (~7 KB at 48x48)."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def bulk(url: str, key: str, count: int) -> float:
    items: list[dict[str, str | dict[str, int]]] = [
        {
            "image": base64.b64encode(noisy_png()).decode(),
            "prompt": f"item {i}",
            "metadata": {"row": i},
        }
        for i in range(count)
    ]
    body = {"items": items}
    started = time.perf_counter()
    response = requests.post(
        f"{url}/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=600
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    accepted = response.json()["items_accepted"]
    assert accepted == count, f"{accepted} of {count} accepted"
    return count / elapsed


def single(url: str, key: str, count: int, clients: int = 8) -> float:
    images = [noisy_png(24) for _ in range(count)]
    local = threading.local()

    def post(index: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {key}"
        response = session.post(
            f"{url}/v1/jobs",
            files={"image": ("i.png", images[index])},
            data={"prompt": "hi"},
            timeout=60,
        )
        assert response.status_code == 202, response.text

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, range(min(50, count))))  # warm connections and code paths
        started = time.perf_counter()
        list(pool.map(post, range(count)))
        elapsed = time.perf_counter() - started
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1200)
    args = parser.parse_args()
    with running_stack(checkpoint("tiny")) as stack:
        bulk_rate = bulk(stack.url, stack.key, args.items)
        single_rate = single(stack.url, stack.key, args.single)
        database = stack.settings.database_url.split(":", 1)[0]
    workers = 2 * (os.cpu_count() or 1) + 1
    print(f"\nintake benchmark (gunicorn, {workers} workers x 4 threads, {database}, no model)")
    print(
        f"  bulk   ({args.items} items, one POST /v1/batches): {bulk_rate:6.0f} items/s (>= 2000)"
    )
    print(f"  single (POST /v1/jobs, 8 concurrent clients):  {single_rate:6.0f} jobs/s  (>= 300)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
