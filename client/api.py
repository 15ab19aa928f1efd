"""A small synchronous client: submit jobs, read them, wait for them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


class ApiError(Exception):
    """The API answered with an error; ``problem`` is its problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title')}")
        self.status = status
        self.problem = problem


class Client:
    """``Client("http://host:8000", key)``; every call raises :class:`ApiError` on 4xx/5xx."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {key}"
        self._timeout_s = timeout_s

    def submit(self, image: bytes | str | Path, prompt: str, **options: Any) -> dict[str, Any]:
        """Submit one job (image as bytes or a file path); returns the job as accepted."""
        data = Path(image).read_bytes() if isinstance(image, str | Path) else image
        form = {"prompt": prompt, **{k: str(v) for k, v in options.items()}}
        response = self._session.post(
            f"{self.url}/v1/jobs",
            files={"image": ("image", data)},
            data=form,
            timeout=self._timeout_s,
        )
        return self._json(response)

    def get(self, job_id: str) -> dict[str, Any]:
        """The job's current state."""
        return self._json(
            self._session.get(f"{self.url}/v1/jobs/{job_id}", timeout=self._timeout_s)
        )

    def wait(self, job_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the job is final; raises ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job["status"] in FINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise ApiError(response.status_code, problem)
        body: dict[str, Any] = response.json()
        return body
