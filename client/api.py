"""A small synchronous client: submit jobs and batches, read them, wait for them, follow
their event streams."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from client.errors import raise_for_problem
from client.stream import StreamEvent, follow

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
# The server answers a long-poll after at most this long; the client asks again.
LONG_POLL_S = 20.0


class Client:
    """``Client("http://host:8000", key)``; every call raises :class:`ApiError` on 4xx/5xx.

    Pipelines: :meth:`batch` submits up to 10,000 items in one request (partial
    acceptance: the answer lists accepted and rejected items by index),
    :meth:`wait_batch` follows its progress and :meth:`batch_results` streams results.
    """

    def __init__(self, url: str, key: str, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {key}"
        self._timeout_s = timeout_s

    def submit(
        self,
        image: bytes | str | Path,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Submit one job (image as bytes or a file path). With ``idempotency_key``, a
        repeated call returns the job created the first time."""
        return self.submit_once(image, prompt, idempotency_key=idempotency_key, **fields)[0]

    def submit_once(
        self,
        image: bytes | str | Path,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> tuple[dict[str, Any], bool]:
        """Like :meth:`submit`, also saying whether this call created the job (False: an
        earlier call with the same ``idempotency_key`` did)."""
        data = Path(image).read_bytes() if isinstance(image, str | Path) else image
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        if prompt is not None:
            form["prompt"] = prompt
        # A key of our own when the caller gave none, so that a repeat after a dropped
        # connection (see _send) cannot make a second job; then an answer naming an
        # existing job means our first attempt made it.
        key = idempotency_key or f"client-{uuid.uuid4()}"
        response = self._send(
            "POST",
            "/v1/jobs",
            files={"image": ("image", data)},
            data=form,
            headers={"Idempotency-Key": key},
        )
        return self._json(response), response.status_code == 202 or idempotency_key is None

    def get(self, job_id: str, *, wait_s: float = 0) -> dict[str, Any]:
        """The job's state; with ``wait_s`` the server answers as soon as it is final."""
        params = {"wait": f"{wait_s:g}"} if wait_s else None
        return self._call(
            "GET", f"/v1/jobs/{job_id}", params=params, timeout=self._timeout_s + wait_s
        )

    def jobs(
        self,
        *,
        status: str | None = None,
        action: str | None = None,
        batch_id: str | None = None,
        model_revision: str | None = None,
        policy_version: str | None = None,
        created_after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The tenant's jobs matching every filter given, newest first, fetched a page
        (``limit`` jobs) at a time as the iteration needs them. ``model_revision`` and
        ``policy_version`` match exactly (each job carries both fields)."""
        filters = {
            "status": status,
            "action": action,
            "batch_id": batch_id,
            "model_revision": model_revision,
            "policy_version": policy_version,
            "created_after": created_after,
            "limit": limit,
        }
        params = {name: value for name, value in filters.items() if value is not None}
        while True:
            page = self._call("GET", "/v1/jobs", params=params)
            yield from page["jobs"]
            if page["next_cursor"] is None:
                return
            params["cursor"] = page["next_cursor"]

    def wait(self, job_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Until the job is final (long-polling the server); ``TimeoutError`` after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            job = self.get(job_id, wait_s=max(0.0, min(LONG_POLL_S, left)))
            if job["status"] in FINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def batch(
        self,
        items: Sequence[dict[str, Any]],
        *,
        callback_url: str | None = None,
        item_events: bool = False,
    ) -> dict[str, Any]:
        """Submit a batch. Items are job fields plus ``image`` (bytes, base64 text or a
        path) or ``image_url``, optional ``metadata`` and ``idempotency_key``. With
        ``item_events`` each item's job.* events go to ``callback_url`` too."""
        body: dict[str, Any] = {"items": [_encode_item(item) for item in items]}
        if callback_url:
            body["callback_url"] = callback_url
        if item_events:
            body["item_events"] = True
        # Not repeated after a dropped connection: items without a key would be made twice.
        return self._call(
            "POST", "/v1/batches", repeatable=False, json=body, timeout=self._timeout_s * 10
        )

    def batches(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the tenant's batches, newest first (``status``: ``open`` or
        ``completed``): ``{"batches": [...], "next_cursor"}``."""
        return self._page("/v1/batches", status=status, limit=limit, cursor=cursor)

    def retry_batch(
        self, batch_id: str, *, error_codes: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Run the batch's failed items (only those with one of ``error_codes``, if
        given) again as a new batch; the answer has its ``id`` and ``retry_of``."""
        body = {"error_codes": list(error_codes)} if error_codes is not None else {}
        return self._call("POST", f"/v1/batches/{batch_id}/retry", repeatable=False, json=body)

    def deliveries(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the tenant's webhook events, newest first (``status="failed"``:
        those that need attention): ``{"deliveries": [...], "next_cursor"}``."""
        return self._page("/v1/deliveries", status=status, limit=limit, cursor=cursor)

    def redeliver(self, since: datetime, until: datetime | None = None) -> dict[str, Any]:
        """Send the failed and kept events created in ``[since, until)`` (aware
        datetimes; ``until`` defaults to now) again: ``{"redelivering": [ids], "more"}``.
        Calling it again does not resend what is already on its way."""
        body = {"since": since.isoformat()}
        if until is not None:
            body["until"] = until.isoformat()
        return self._call("POST", "/v1/deliveries/redeliver", json=body)

    def endpoints(self) -> list[dict[str, Any]]:
        """The tenant's webhook endpoints and their health (``healthy``, ``failing``,
        ``disabled``), disabled ones first."""
        found: list[dict[str, Any]] = self._call("GET", "/v1/endpoints")["endpoints"]
        return found

    def enable_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """Enable a disabled endpoint again; recover its kept events with
        :meth:`redeliver`."""
        return self._call("POST", f"/v1/endpoints/{endpoint_id}/enable")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (``DELETE /v1/jobs/{id}``)."""
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def purge(self, job_id: str) -> dict[str, Any]:
        """Erase a job and everything of it now, canceling it first if needed; it answers
        404 from then on (``DELETE /v1/jobs/{id}?purge=true``)."""
        return self._call("DELETE", f"/v1/jobs/{job_id}", params={"purge": "true"})

    def purge_batch(self, batch_id: str) -> dict[str, Any]:
        """Erase a batch and all its jobs now (``DELETE /v1/batches/{id}?purge=true``)."""
        return self._call("DELETE", f"/v1/batches/{batch_id}", params={"purge": "true"})

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """Counts by status and progress."""
        return self._call("GET", f"/v1/batches/{batch_id}")

    def wait_batch(
        self, batch_id: str, *, timeout_s: float = 3600.0, poll_s: float = 1.0
    ) -> dict[str, Any]:
        """Poll until every item ended; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.batch_status(batch_id)
            if status["completed_at"] is not None:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {batch_id} at {status['progress']:.0%} after {timeout_s} s"
                )
            time.sleep(poll_s)

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The finished items, streamed (one dict per NDJSON line, in item order)."""
        with self._send("GET", f"/v1/batches/{batch_id}/results", stream=True) as response:
            if response.status_code >= 400:
                self._json(response)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """The job's events as they happen, up to and including ``done`` (whose data is
        the final job): ``status``, ``delta`` (``{"part": "reasoning" | "answer",
        "text"}``), ``reset`` (forget the text so far: it comes again). A dropped
        connection is resumed without loss or repetition (:mod:`client.stream`);
        ``last_event_id`` (an event's ``id``) resumes an earlier stream."""
        return follow(
            self._session,
            f"{self.url}/v1/jobs/{job_id}/events",
            last_event_id=last_event_id,
            timeout_s=self._timeout_s,
        )

    def stream_batch(
        self, batch_id: str, *, last_event_id: str | None = None
    ) -> Iterator[StreamEvent]:
        """The batch's events up to and including ``done`` (the completed batch):
        ``progress`` (the batch as :meth:`batch_status` returns it), ``item`` (a finished
        item, as a line of :meth:`batch_results`), in the order the items ended."""
        return follow(
            self._session,
            f"{self.url}/v1/batches/{batch_id}/events",
            last_event_id=last_event_id,
            timeout_s=self._timeout_s,
        )

    def ask(
        self, image: bytes | str | Path, prompt: str | None = None, **fields: Any
    ) -> Iterator[StreamEvent]:
        """Submit one job and follow its stream (:meth:`stream`), e.g. to print the
        answer as it is written::

            for event in client.ask("cat.jpg", "What is this?"):
                if event.event == "delta" and event.data["part"] == "answer":
                    print(event.data["text"], end="", flush=True)
        """
        job = self.submit(image, prompt, **fields)
        return self.stream(job["id"])

    def _page(self, path: str, **params: str | int | None) -> dict[str, Any]:
        wanted = {name: value for name, value in params.items() if value is not None}
        return self._call("GET", path, params=wanted)

    def _call(
        self, method: str, path: str, *, repeatable: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        """The JSON answer of :meth:`_send`; :class:`ApiError` for a problem."""
        return self._json(self._send(method, path, repeatable=repeatable, **kwargs))

    def _send(
        self, method: str, path: str, *, repeatable: bool = True, **kwargs: Any
    ) -> requests.Response:
        """Send a request (``timeout`` defaults to the client's). A ``repeatable`` one (a
        read, a cancel, a submission under its Idempotency-Key) is sent once more, on a
        new connection, if the first try failed at the connection: a kept-alive
        connection that the server closed while it sat idle fails the next request sent
        on it (gunicorn closes idle ones after 2 s), and that request never reached the
        API, or reached it under a key that makes a repeat harmless."""
        kwargs.setdefault("timeout", self._timeout_s)
        try:
            return self._session.request(method, f"{self.url}{path}", **kwargs)
        except requests.ConnectionError:
            if not repeatable:
                raise
            return self._session.request(method, f"{self.url}{path}", **kwargs)

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        raise_for_problem(response)
        body: dict[str, Any] = response.json()
        return body


def _encode_item(item: dict[str, Any]) -> dict[str, Any]:
    image = item.get("image")
    if isinstance(image, Path):
        image = image.read_bytes()
    if isinstance(image, bytes):
        return {**item, "image": base64.b64encode(image).decode()}
    return item
