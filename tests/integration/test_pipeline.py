"""The whole path: HTTP in, a separate worker process, results back over HTTP."""

from __future__ import annotations

import base64
import io
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

from shared.blobs import BlobStore
from tests.stack import Stack, make_image
from worker.model.base import GenerationOptions, GenerationRequest
from worker.model.hf import TransformersBackend


def _submit_json(stack: Stack, index: int, prompt: str) -> str:
    response = requests.post(
        f"{stack.url}/v1/jobs",
        json={
            "image": base64.b64encode(make_image(index, fmt="JPEG")).decode(),
            "prompt": prompt,
            "max_new_tokens": 8,
        },
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    return str(response.json()["id"])


def test_twenty_jobs_over_http_all_succeed_in_real_batches(stack: Stack) -> None:
    client = stack.client()
    ids = []
    for index in range(20):
        if index % 2:
            ids.append(_submit_json(stack, index, f"json job {index}"))
        else:
            job = client.submit(make_image(index), f"multipart job {index}", max_new_tokens=8)
            assert job["status"] == "queued"
            ids.append(job["id"])
    stack.start_worker()

    done = stack.wait_all(ids)

    assert [job["status"] for job in done] == ["succeeded"] * 20
    for job in done:
        assert isinstance(job["result"], str)
        assert job["error"] is None
        assert 1 <= job["output_tokens"] <= 8
        assert job["worker"].startswith("cpu0@")
        assert job["inference_ms"] >= 0 and job["queue_ms"] >= 0
    sizes = Counter(job["batch_size"] for job in done)
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    # Every job's recorded batch size is matched by that many jobs sharing a pass.
    assert all(size <= 8 for size in sizes)


def test_sixteen_queued_jobs_run_as_two_batches_of_eight(
    stack: Stack, tiny_checkpoint: Path
) -> None:
    client = stack.client()
    ids = [client.submit(make_image(i), "describe", max_new_tokens=6)["id"] for i in range(16)]
    stack.start_worker()

    done = stack.wait_all(ids)

    assert [job["batch_size"] for job in done] == [8] * 16
    assert all(job["status"] == "succeeded" for job in done)
    rows = stack.jobs(ids)
    started = Counter(row.started_at for row in rows)
    assert sorted(started.values()) == [8, 8], "two claims of eight jobs each"
    # fp32 greedy: each job run alone gives exactly the text it got inside its batch.
    backend = TransformersBackend(tiny_checkpoint)
    backend.load("cpu")
    blobs = BlobStore(stack.settings.blob_url)
    for row in rows:
        image = Image.open(io.BytesIO(blobs.get(row.image_key))).convert("RGB")
        options = GenerationOptions(max_new_tokens=6)
        alone = backend.generate(
            [
                GenerationRequest(
                    image=image, prompt=row.prompt, options=options, thinking=row.thinking
                )
            ]
        )
        assert alone[0].text == row.result
        assert alone[0].tokens == row.output_tokens


def test_unknown_job_is_404_problem(stack: Stack) -> None:
    response = requests.get(
        f"{stack.url}/v1/jobs/00000000-0000-0000-0000-000000000000",
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
