"""``sightline``: argument parsing and dispatch; the work lives in the parts it runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from client import Client


def _db_upgrade(args: argparse.Namespace) -> int:
    from migrations import upgrade

    upgrade(Settings())
    print("database is up to date")
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from migrations import downgrade

    downgrade(Settings(), args.revision)
    print(f"database is at revision {args.revision}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory, transaction
    from shared.keys import create_key

    engine = create_engine_for(Settings())
    try:
        with transaction(session_factory(engine)) as session:
            row, key = create_key(
                session,
                args.name,
                callback_url=args.callback_url,
                tenant=args.tenant,
                expires_in_s=args.expires_in,
                rate_limit=args.rate_limit,
                max_queued=args.max_queued,
            )
            info = {
                "id": str(row.id),
                "name": row.name,
                "tenant": row.tenant.name,
                "tenant_id": str(row.tenant_id),
                "key": key,
                "webhook_secret": row.tenant.webhook_secret,
                "callback_url": row.callback_url,
            }
    except LookupError as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"API key {info['name']!r} ({info['id']}) of tenant {info['tenant']!r}")
        print("shown once, store them now:")
        print(f"key:            {key}")
        print(f"webhook secret: {info['webhook_secret']}  (the tenant's, shared by its keys)")
    return 0


def _rate(value: str) -> str:
    from api.limits import parse_rate

    try:
        parse_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _keys_list(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory
    from shared.keys import list_keys

    engine = create_engine_for(Settings())
    with session_factory(engine)() as session:
        rows = list_keys(session)
    engine.dispose()
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        expiry = f", expires {row['expires_at']}" if row["expires_at"] else ""
        where = f"tenant {row['tenant']}"
        print(f"{row['prefix']}…  {row['name']}  {where}  ({state}{expiry})  {row['id']}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory, transaction
    from shared.keys import find_key, revoke_key

    engine = create_engine_for(Settings())
    try:
        with transaction(session_factory(engine)) as session:
            row = find_key(session, args.key)
            revoke_key(session, row)
            print(f"revoked {row.name!r} ({row.id})")
    except LookupError as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _keys_rotate_secret(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory, transaction
    from shared.keys import find_key, rotate_webhook_secret

    settings = Settings()
    engine = create_engine_for(settings)
    try:
        with transaction(session_factory(engine)) as session:
            tenant = find_key(session, args.key).tenant
            secret = rotate_webhook_secret(session, tenant, settings.secret_rotation_grace_s)
            info = {"tenant_id": str(tenant.id), "tenant": tenant.name, "webhook_secret": secret}
    except LookupError as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    hours = settings.secret_rotation_grace_s / 3600
    if args.json:
        print(json.dumps(info))
    else:
        print(f"new webhook secret for tenant {info['tenant']!r}: {secret}")
        print(f"the previous secret keeps signing (both signatures sent) for {hours:g} h")
    return 0


def _model_build_tiny(args: argparse.Namespace) -> int:
    from worker.model.tiny import build_tiny_checkpoint

    build_tiny_checkpoint(Path(args.path), size=args.size, seed=args.seed)
    print(f"built {args.size} GLM-4V checkpoint (seed {args.seed}) at {args.path}")
    return 0


def _api(args: argparse.Namespace) -> int:
    if args.dev:
        from api import create_app

        create_app(Settings()).run(host=args.host, port=args.port)
        return 0
    # gunicorn's workers count requests apart; in this directory, fresh per server, they
    # share their metrics so that /metrics, whichever worker answers, sums them all.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sightline-api-metrics-")
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{args.host}:{args.port}",
        "--workers",
        # gunicorn's own advice: while some workers wait on the database, the disk or
        # Redis, the others keep the cores busy.
        str(args.workers or 2 * (os.cpu_count() or 1) + 1),
        # Evented: a long-poll or an event stream is a sleeping greenlet, not a thread,
        # so a process holds a thousand of them (psycopg 3 and redis-py cooperate once
        # gevent has patched the standard library, which this worker class does first).
        "--worker-class",
        "gevent",
        "--worker-connections",
        "1000",
        # A 10,000-item batch is validated and stored within one request.
        "--timeout",
        "300",
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "20",
        "api:create_app()",
    ]
    os.execv(sys.executable, command)


def _worker(args: argparse.Namespace) -> int:
    from worker.launcher import main

    return main(Settings())


def _webhooks(args: argparse.Namespace) -> int:
    from worker.ops import run_ops_worker

    return run_ops_worker(Settings())


def _beat(args: argparse.Namespace) -> int:
    from worker.ops import run_beat

    return run_beat(Settings())


def _flower(args: argparse.Namespace) -> int:
    from worker.ops import run_flower

    # Everything after a "--" goes to Flower as is (argparse keeps the separator).
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    return run_flower(Settings(), address=args.address, port=args.port, options=options)


def _demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(Settings(), jobs=args.jobs)


def _ask(args: argparse.Namespace) -> int:
    from client import ApiError, Client, StreamLost

    key = args.key or os.environ.get("SIGHTLINE_API_KEY")
    if not key:
        print("sightline ask: give --key or set SIGHTLINE_API_KEY", file=sys.stderr)
        return 2
    if not Path(args.image).is_file():
        print(f"sightline ask: {args.image}: no such file", file=sys.stderr)
        return 2
    fields: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        fields["max_new_tokens"] = args.max_new_tokens
    if args.thinking is not None:
        fields["thinking"] = args.thinking
    client = Client(args.url, key)
    try:
        job_id = client.submit(args.image, args.prompt, **fields)["id"]
        job = _ask_follow(client, job_id, show=not args.json)
    except (ApiError, StreamLost) as exc:
        print(f"sightline ask: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(job))
    if job["status"] == "succeeded":
        return 0
    error = job["error"] or {}
    reason = f": {error.get('code')}: {error.get('message')}" if error else ""
    print(f"sightline ask: job {job_id} {job['status']}{reason}", file=sys.stderr)
    return 1


def _ask_follow(client: Client, job_id: str, *, show: bool) -> dict[str, Any]:
    """The final job, its text printed as it is written when ``show``: the answer on
    stdout, a thinking job's reasoning on stderr. With the tenant's streams all open
    (429), it long-polls instead and prints the text at the end."""
    from client import ApiError

    shown = {"reasoning": "", "answer": ""}
    job: dict[str, Any] | None = None
    try:
        for event in client.stream(job_id):
            if event.event == "done":
                job = event.data
            elif event.event == "reset" and show and any(shown.values()):
                print(f"\n[{event.data['reason']}: the text starts over]", file=sys.stderr)
                shown = dict.fromkeys(shown, "")
            elif event.event == "delta" and show:
                _ask_print(shown, event.data["part"], event.data["text"])
    except ApiError as exc:
        if exc.status != 429:
            raise
        job = client.wait(job_id)
    assert job is not None, "a stream ends with done"
    if show:
        # Text the stream did not carry (a job that had ended before it opened).
        for part, key in (("reasoning", "reasoning"), ("answer", "result")):
            final = job[key] or ""
            if final.startswith(shown[part]) and len(final) > len(shown[part]):
                _ask_print(shown, part, final[len(shown[part]) :])
        if shown["answer"] or job["status"] == "succeeded":
            print()
    return job


def _ask_print(shown: dict[str, str], part: str, text: str) -> None:
    """Print ``text`` of ``part``: reasoning to stderr, the answer to stdout, on a line
    of its own after any reasoning."""
    if part == "answer" and shown["reasoning"] and not shown["answer"]:
        print(file=sys.stderr)
    out = sys.stdout if part == "answer" else sys.stderr
    out.write(text)
    out.flush()
    shown[part] += text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sightline", description="Durable, micro-batched vision-language inference jobs."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(run=_db_upgrade)
    down = db.add_parser("downgrade", help="undo migrations down to a revision")
    down.add_argument("revision", help="e.g. 0006, or -1 for one step")
    down.set_defaults(run=_db_downgrade)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create an API key (shown once)")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.add_argument(
        "--tenant", help="add the key to this existing tenant (default: a new tenant named NAME)"
    )
    create.add_argument("--callback-url", help="default webhook URL for this key's jobs")
    create.add_argument("--expires-in", type=float, help="seconds until the key stops working")
    create.add_argument("--rate-limit", type=_rate, help="N/S: at most N requests per S seconds")
    create.add_argument(
        "--max-queued",
        type=int,
        help="refuse this key's submissions while N of its tenant's jobs wait",
    )
    create.set_defaults(run=_keys_create)
    listing = keys.add_parser("list", help="keys by name and prefix (never the keys)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("key", help="the key's id or name")
    revoke.set_defaults(run=_keys_revoke)
    rotate = keys.add_parser(
        "rotate-secret", help="new webhook signing secret for a key's tenant (shown once)"
    )
    rotate.add_argument("key", help="the id or name of one of the tenant's keys")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    rotate.set_defaults(run=_keys_rotate_secret)

    model = commands.add_parser("model", help="model checkpoints")
    model_commands = model.add_subparsers(dest="model", required=True)
    tiny = model_commands.add_parser("build-tiny", help="build the offline GLM-4V checkpoint")
    tiny.add_argument("path")
    tiny.add_argument("--size", choices=["tiny", "medium"], default="tiny")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_model_build_tiny)

    api = commands.add_parser("api", help="serve the HTTP API (gunicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    api.add_argument(
        "--workers", type=int, help="gunicorn worker processes (default: 2 x CPU cores + 1)"
    )
    api.add_argument("--dev", action="store_true", help="Flask's development server instead")
    api.set_defaults(run=_api)

    commands.add_parser("worker", help="start one worker per GPU").set_defaults(run=_worker)
    commands.add_parser(
        "webhooks", help="the no-GPU worker: webhook deliveries and the sweeper"
    ).set_defaults(run=_webhooks)
    commands.add_parser("beat", help="schedule the sweeper (Celery beat)").set_defaults(run=_beat)
    flower = commands.add_parser("flower", help="Flower, the broker's task monitor")
    flower.add_argument("--address", default="127.0.0.1", help="0.0.0.0 to listen on all")
    flower.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5555")))
    flower.add_argument("options", nargs=argparse.REMAINDER, help="-- then Flower's options")
    flower.set_defaults(run=_flower)

    from cli.submit import add_parser as add_submit
    from cli.tenants import add_parser as add_tenants

    add_submit(commands)
    add_tenants(commands)

    ask = commands.add_parser(
        "ask", help="ask one question of an image, print the answer as it is written"
    )
    ask.add_argument("image", help="an image file")
    ask.add_argument("prompt", help="the question")
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        help="the model's thinking switch (default: the server's); reasoning goes to stderr",
    )
    ask.add_argument("--json", action="store_true", help="print only the final job, as JSON")
    ask.add_argument("--url", default=os.environ.get("SIGHTLINE_API_URL", "http://127.0.0.1:8000"))
    ask.add_argument("--key", help="API key (default: $SIGHTLINE_API_KEY)")
    ask.set_defaults(run=_ask)

    demo = commands.add_parser("demo", help="embedded end-to-end run")
    demo.add_argument("--jobs", type=int, default=6, help="sample jobs to submit")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SIGHTLINE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces each of its plugins at INFO; only the migrations are news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
