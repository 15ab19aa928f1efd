"""``sightline demo``: the whole path on embedded defaults, from nothing to results.

Starts a private Redis, builds the tiny checkpoint if missing, migrates the SQLite
database, creates a key, runs the API (gunicorn) and a worker as real processes, submits
sample images over HTTP, prints each result with its batch size and timings, and shuts
everything down. Exit code 0 only if every job succeeded.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image, ImageDraw

from cli.processes import start_api, start_worker, stop, wait_http_ok
from cli.redis_server import RedisServer, free_port
from client import Client
from shared.settings import Settings

SAMPLES = [
    ("red", (220, 40, 40), "ellipse", "What shape is in this picture?"),
    ("green", (40, 180, 60), "rectangle", "Describe the colours you see."),
    ("blue", (40, 80, 220), "triangle", "Is there anything unsafe in this image?"),
    ("orange", (250, 150, 30), "ellipse", "Count the objects."),
    ("purple", (140, 60, 170), "rectangle", "Write a one-line caption."),
    ("teal", (30, 160, 160), "triangle", "Which colour dominates?"),
]


def sample_image(index: int) -> bytes:
    """A small generated PNG: a coloured shape on a light background."""
    _, colour, shape, _ = SAMPLES[index % len(SAMPLES)]
    size = (160 + 24 * index, 120 + 16 * index)
    image = Image.new("RGB", size, (245, 245, 240))
    draw = ImageDraw.Draw(image)
    box = (20, 20, size[0] - 20, size[1] - 20)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=colour
        )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def run_demo(settings: Settings, jobs: int = 6) -> int:
    """Run the demo; see the module docstring. Returns the process exit code."""
    data = settings.data_dir.resolve()
    logs = data / "logs"
    port = int(settings.broker_url.rsplit(":", 1)[1].split("/")[0])
    print(f"sightline demo: data in {data}, logs in {logs}")
    with RedisServer(port) as redis:
        print(f"  redis      {redis.url}")
        env = _environment(settings, redis.url)
        key = _prepare(settings)
        api_port = free_port()
        api = start_api(env, api_port, logs / "api.log")
        worker = start_worker(env, logs / "worker.log")
        try:
            url = f"http://127.0.0.1:{api_port}"
            wait_http_ok(f"{url}/readyz", process=api)
            print(f"  api        {url}  (worker starting: loads the model, then consumes)")
            return _submit_and_report(Client(url, key), jobs)
        finally:
            worker_code = stop(worker)
            stop(api)
            print(f"  shut down (worker exit code {worker_code})")


def _environment(settings: Settings, broker_url: str) -> dict[str, str]:
    return {
        "SIGHTLINE_DATA_DIR": str(settings.data_dir.resolve()),
        "SIGHTLINE_DATABASE_URL": settings.database_url,
        "SIGHTLINE_BROKER_URL": broker_url,
        "SIGHTLINE_BLOB_URL": settings.blob_url,
        "SIGHTLINE_MODEL_PATH": settings.model_path,
        "SIGHTLINE_DEVICES": settings.devices or "cpu",
        "SIGHTLINE_MAX_BATCH_SIZE": str(settings.max_batch_size),
        "SIGHTLINE_MAX_BATCH_WAIT_MS": str(settings.max_batch_wait_ms),
    }


def _prepare(settings: Settings) -> str:
    """Build the model if missing, migrate, and return a fresh API key."""
    from migrations import upgrade
    from shared.db import create_engine_for, session_factory, transaction
    from shared.keys import create_key

    model = Path(settings.model_path)
    if not (model / "config.json").exists():
        from worker.model.tiny import build_tiny_checkpoint

        print(f"  model      building the tiny GLM-4V checkpoint at {model}")
        build_tiny_checkpoint(model)
    else:
        print(f"  model      {model}")
    upgrade(settings)
    engine = create_engine_for(settings)
    with transaction(session_factory(engine)) as session:
        _, key = create_key(session, f"demo-{int(time.time())}")
    engine.dispose()
    return key


def _submit_and_report(client: Client, count: int) -> int:
    submitted = []
    for index in range(count):
        prompt = SAMPLES[index % len(SAMPLES)][3]
        job = client.submit(sample_image(index), prompt, max_new_tokens=16)
        submitted.append((prompt, job["id"]))
    print(f"  submitted  {count} jobs over HTTP; waiting for results\n")
    failures = 0
    for prompt, job_id in submitted:
        job = client.wait(job_id, timeout_s=300)
        if job["status"] != "succeeded":
            failures += 1
        answer = job["result"] if job["result"] is not None else job["error"]
        print(f"  [{job['status']}] {prompt}")
        print(f"      result: {answer!r}")
        print(
            f"      batch size {job['batch_size']}, queued {job['queue_ms']} ms, "
            f"inference {job['inference_ms']} ms, worker {job['worker']}"
        )
    print(f"\n  {count - failures}/{count} jobs succeeded")
    return 0 if failures == 0 else 1
