"""``sightline submit``: send images from disk to a sightline server and collect results.

Takes files, directories (recursively, image files only) and NDJSON manifests (one
object per line: ``path`` or ``image_url``, optional ``prompt``, ``metadata``). Every
item gets an idempotency key derived from its content and prompt, so running the same
command again submits nothing new and just collects the results. Progress bars show
uploads and completions; results go to an NDJSON file, one line per item.

With ``--batch`` completions come from each batch's event stream (``GET
/v1/batches/{id}/events``) as items end; single jobs, items submitted by an earlier run
(they belong to its batch) and any batch whose stream is refused (429: the tenant's
streams are all open) or lost are waited for with long-polls instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client import ApiError, Client, StreamLost

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
# Items per POST /v1/batches when --batch is given.
BATCH_CHUNK = 1000


@dataclass
class Item:
    """One thing to submit: a local file or a URL, with its prompt and metadata."""

    label: str
    prompt: str | None
    path: Path | None = None
    image_url: str | None = None
    metadata: Any = None
    job_id: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def idempotency_key(self) -> str:
        """Same file content (or URL) and prompt: same key, on every run."""
        source = hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path else self.image_url
        identity = json.dumps([source, self.prompt, self.fields], sort_keys=True)
        return "submit-" + hashlib.sha256(identity.encode()).hexdigest()[:48]


def collect(paths: list[str], prompt: str | None) -> list[Item]:
    """Expand the command-line paths into items, in a stable order."""
    items: list[Item] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            items += [Item(label=str(f), prompt=prompt, path=f) for f in files]
        elif path.suffix.lower() in (".ndjson", ".jsonl"):
            items += list(_manifest(path, prompt))
        elif path.is_file():
            items.append(Item(label=str(path), prompt=prompt, path=path))
        else:
            raise SystemExit(f"sightline submit: {raw}: no such file or directory")
    return items


def _manifest(path: Path, prompt: str | None) -> Iterator[Item]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        entry = json.loads(line)
        image = entry.get("path")
        yield Item(
            label=image or entry.get("image_url") or f"{path}:{number}",
            prompt=entry.get("prompt", prompt),
            path=(path.parent / image) if image else None,
            image_url=entry.get("image_url"),
            metadata=entry.get("metadata"),
        )


def run(args: argparse.Namespace) -> int:
    """Submit, wait, write results. Exit 0 when every item succeeded, 1 otherwise."""
    key = args.key or os.environ.get("SIGHTLINE_API_KEY")
    if not key:
        print("sightline submit: give --key or set SIGHTLINE_API_KEY", file=sys.stderr)
        return 2
    fields: dict[str, Any] = {}
    if args.preset:
        fields["preset"] = args.preset
    if args.max_new_tokens:
        fields["max_new_tokens"] = args.max_new_tokens
    if args.callback_url:
        fields["callback_url"] = args.callback_url
    items = collect(args.paths, args.prompt)
    for item in items:
        item.fields = fields
    if not items:
        print("sightline submit: no image files found", file=sys.stderr)
        return 2
    client = Client(args.url, key)
    batch_ids: list[str] = []
    try:
        created = (
            _submit_batches(client, items, args.callback_url, batch_ids)
            if args.batch
            else _submit_jobs(client, items)
        )
    except ApiError as exc:
        print(f"sightline submit: the server refused: {exc}", file=sys.stderr)
        return 1
    print(
        f"submitted {created} new job(s); {len(items) - created} were already submitted",
        file=sys.stderr,
    )
    failures = _collect_results(client, items, batch_ids, Path(args.out))
    print(f"{len(items) - failures}/{len(items)} succeeded; results in {args.out}", file=sys.stderr)
    return 0 if failures == 0 else 1


def _submit_jobs(client: Client, items: list[Item]) -> int:
    created = 0
    for item in tqdm(items, desc="upload", unit="img"):
        if item.path is None:
            raise SystemExit("sightline submit: image_url items need --batch")
        job, new = client.submit_once(
            item.path, item.prompt, idempotency_key=item.idempotency_key(), **item.fields
        )
        item.job_id = job["id"]
        created += new
    return created


def _submit_batches(
    client: Client, items: list[Item], callback_url: str | None, batch_ids: list[str]
) -> int:
    """Submit ``items`` in batches of ``BATCH_CHUNK``; the ids of those that hold new jobs
    are added to ``batch_ids``."""
    created = 0
    with tqdm(total=len(items), desc="upload", unit="img") as bar:
        for start in range(0, len(items), BATCH_CHUNK):
            chunk = items[start : start + BATCH_CHUNK]
            payload = []
            for item in chunk:
                entry: dict[str, Any] = {
                    **{k: v for k, v in item.fields.items() if k != "callback_url"},
                    "idempotency_key": item.idempotency_key(),
                    "metadata": item.metadata
                    if item.metadata is not None
                    else {"source": item.label},
                }
                if item.prompt is not None:
                    entry["prompt"] = item.prompt
                if item.path is not None:
                    entry["image"] = item.path.read_bytes()
                else:
                    entry["image_url"] = item.image_url
                payload.append(entry)
            answer = client.batch(payload, callback_url=callback_url)
            for rejected in answer["rejected"]:
                item = chunk[rejected["index"]]
                print(f"rejected {item.label}: {rejected['detail']}", file=sys.stderr)
            new = [a for a in answer["accepted"] if not a.get("existing", False)]
            for accepted in answer["accepted"]:
                chunk[accepted["index"]].job_id = accepted["id"]
            created += len(new)
            if new:  # repeats stay in an earlier batch: this one has no jobs to stream
                batch_ids.append(answer["id"])
            bar.update(len(chunk))
    return created


def _collect_results(client: Client, items: list[Item], batch_ids: list[str], out: Path) -> int:
    """Wait for every item (the batches' streams, then long-polls for the rest) and write
    the results in item order; returns the number of items that did not succeed."""
    ended: dict[str, dict[str, Any]] = {}  # by job id: the job, or its batch result line
    with tqdm(total=len(items), desc="done", unit="job") as bar:
        bar.update(sum(not item.job_id for item in items))
        for batch_id in batch_ids:
            _follow_batch(client, batch_id, ended, bar)
        for item in items:
            if item.job_id and item.job_id not in ended:
                ended[item.job_id] = client.wait(item.job_id, timeout_s=24 * 3600)
                bar.update(1)
    failures = 0
    with out.open("w", encoding="utf-8") as sink:
        for item in items:
            if not item.job_id:
                failures += 1
                sink.write(json.dumps({"source": item.label, "status": "rejected"}) + "\n")
                continue
            job = ended[item.job_id]
            failures += job["status"] != "succeeded"
            line = {
                "source": item.label,
                "id": job["id"],
                "status": job["status"],
                "result": job["result"],
                "result_json": job["result_json"],
                "action": job["action"],
                "policy_version": job["policy_version"],
                "model_revision": job["model_revision"],
                "cached": job["cached"],
                "error": job["error"],
                "metadata": item.metadata,
            }
            sink.write(json.dumps(line) + "\n")
    return failures


def _follow_batch(
    client: Client, batch_id: str, ended: dict[str, dict[str, Any]], bar: tqdm[Any]
) -> None:
    """Add the batch's items to ``ended`` as its stream reports them; a stream refused or
    lost leaves the rest to the long-polls."""
    try:
        for event in client.stream_batch(batch_id):
            if event.event == "item" and event.data["id"] not in ended:
                ended[event.data["id"]] = event.data
                bar.update(1)
    except (ApiError, StreamLost) as exc:
        if isinstance(exc, ApiError) and exc.status != 429:
            raise
        tqdm.write(f"batch {batch_id}: {exc}; waiting for its jobs one by one", file=sys.stderr)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sightline submit``."""
    submit = commands.add_parser(
        "submit", help="submit images to a sightline server, collect results"
    )
    submit.add_argument("paths", nargs="+", help="image files, directories, or NDJSON manifests")
    submit.add_argument("--prompt", help="the question (unless --preset or the manifest gives one)")
    submit.add_argument("--preset", help="a policy preset, e.g. moderation-v1")
    submit.add_argument("--max-new-tokens", type=int)
    submit.add_argument("--batch", action="store_true", help="use POST /v1/batches (bulk priority)")
    submit.add_argument("--callback-url", help="webhook for each job (or the batch with --batch)")
    submit.add_argument("--out", default="results.ndjson", help="where to write results (NDJSON)")
    submit.add_argument(
        "--url", default=os.environ.get("SIGHTLINE_API_URL", "http://127.0.0.1:8000")
    )
    submit.add_argument("--key", help="API key (default: $SIGHTLINE_API_KEY)")
    submit.set_defaults(run=run)
