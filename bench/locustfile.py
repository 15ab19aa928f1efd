"""The soak's traffic for locust (``bench/soak.py`` runs it headless): single jobs, small
batches, gets and lists, as one API client mix. ``SOAK_KEY`` is the API key."""

from __future__ import annotations

import base64
import io
import os
import random

from locust import HttpUser, between, task
from PIL import Image

_IMAGES = []
for _i in range(8):
    _out = io.BytesIO()
    Image.new("RGB", (64, 48), ((_i * 67) % 256, (_i * 131) % 256, 90)).save(_out, "PNG")
    _IMAGES.append(_out.getvalue())


class ApiClient(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['SOAK_KEY']}"
        self.jobs: list[str] = []

    @task(4)
    def submit(self) -> None:
        answer = self.client.post(
            "/v1/jobs",
            files={"image": ("image", random.choice(_IMAGES))},
            data={"prompt": "soak", "max_new_tokens": "4"},
            name="POST /v1/jobs",
        )
        if answer.status_code == 202:
            self.jobs = [*self.jobs[-50:], answer.json()["id"]]

    @task(1)
    def batch(self) -> None:
        items = [
            {
                "image": base64.b64encode(random.choice(_IMAGES)).decode(),
                "prompt": "soak",
                "max_new_tokens": 4,
            }
            for _ in range(5)
        ]
        self.client.post("/v1/batches", json={"items": items}, name="POST /v1/batches")

    @task(6)
    def get(self) -> None:
        if self.jobs:
            self.client.get(f"/v1/jobs/{random.choice(self.jobs)}", name="GET /v1/jobs/{id}")

    @task(2)
    def listing(self) -> None:
        self.client.get("/v1/jobs?limit=20", name="GET /v1/jobs")
