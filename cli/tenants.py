"""``sightline tenants``: an operator's commands on tenants.

``tenants list`` prints them with their weight; ``tenants weight NAME N`` sets a tenant's
share of the workers against the others (:mod:`shared.fair_share`), and ``tenants
shares`` what each got lately.

``tenants retention NAME DAYS`` sets how long the tenant's finished jobs keep their
content (``0``: forever; ``default``: ``SIGHTLINE_RETENTION_DAYS``), see
:mod:`shared.retention`. ``tenants purge NAME --yes`` erases every job and batch of the
tenant now (:mod:`shared.purge`), recorded in the audit as done by the operator's login
(or ``--operator``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import timedelta

from shared.settings import Settings

DEFAULT = "default"


def _list(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory
    from shared.tenants import list_tenants

    engine = create_engine_for(Settings())
    try:
        with session_factory(engine)() as session:
            rows = list_tenants(session)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['name']}  weight {row['weight']}  {row['keys']} key(s)  {row['id']}")
    return 0


def _weight(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory, transaction
    from shared.tenants import find_tenant, set_weight

    engine = create_engine_for(Settings())
    try:
        with transaction(session_factory(engine)) as session:
            row = find_tenant(session, args.tenant)
            set_weight(session, row, args.weight)
            print(f"tenant {row.name!r} ({row.id}) now has weight {row.weight}")
    except (LookupError, ValueError) as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _shares(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory
    from shared.models import utcnow
    from shared.tenants import SHARE_WINDOW, shares

    window = SHARE_WINDOW if args.minutes is None else timedelta(minutes=args.minutes)
    engine = create_engine_for(Settings())
    try:
        with session_factory(engine)() as session:
            rows = shares(session, utcnow() - window)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{**row.__dict__, "tenant_id": str(row.tenant_id)} for row in rows]))
        return 0
    for row in rows:
        print(
            f"{row.tenant}  {row.fraction:6.1%}  weight {row.weight}  "
            f"interactive {row.interactive}  bulk {row.bulk}"
        )
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sightline tenants``."""
    tenants = commands.add_parser(
        "tenants", help="tenants: weights, shares of work, retention, purge"
    )
    actions = tenants.add_subparsers(dest="tenants", required=True)
    listing = actions.add_parser("list", help="tenants by name, with weight and key count")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=_list)
    weight = actions.add_parser(
        "weight", help="set a tenant's share of the workers against other tenants (default 1)"
    )
    weight.add_argument("tenant", help="the tenant's name or id")
    weight.add_argument("weight", type=int, help="a whole number from 1 to 1000")
    weight.set_defaults(run=_weight)
    share = actions.add_parser("shares", help="each tenant's share of the jobs started lately")
    # The default (15) is shared.tenants.SHARE_WINDOW, read when the command runs: the
    # parser is built for every command, and that module brings in the database layer.
    share.add_argument("--minutes", type=float, help="how far back (default 15)")
    share.add_argument("--json", action="store_true", help="print a JSON list")
    share.set_defaults(run=_shares)
    retention = actions.add_parser(
        "retention", help="days the tenant's finished jobs keep their content"
    )
    retention.add_argument("name", help="the tenant's name")
    retention.add_argument(
        "days",
        type=_days,
        help=f"whole days; 0 keeps content forever, {DEFAULT!r} follows SIGHTLINE_RETENTION_DAYS",
    )
    retention.set_defaults(run=_retention)
    purge = actions.add_parser("purge", help="erase every job and batch of the tenant now")
    purge.add_argument("name", help="the tenant's name")
    purge.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    purge.add_argument("--operator", help="who purges, for the audit (default: your login)")
    purge.add_argument("--json", action="store_true", help="print one JSON object")
    purge.set_defaults(run=_purge)


def _days(raw: str) -> int | None:
    if raw == DEFAULT:
        return None
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if days < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of days (0 or more) or default")
    return days


def _login() -> str:
    """The operator's login name, or ``uid N`` where the system has none (a container
    running under a bare uid)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def _retention(args: argparse.Namespace) -> int:
    from shared.db import create_engine_for, session_factory, transaction
    from shared.tenants import find_tenant

    engine = create_engine_for(Settings())
    try:
        with transaction(session_factory(engine)) as session:
            find_tenant(session, args.name).retention_days = args.days
    except LookupError as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    said = {None: f"{DEFAULT} (SIGHTLINE_RETENTION_DAYS)", 0: "forever"}
    print(f"tenant {args.name!r} keeps content: {said.get(args.days, f'{args.days} days')}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from shared.celery_app import create_celery
    from shared.db import create_engine_for, session_factory
    from shared.job_feed import JobFeed
    from shared.purge import Eraser, Purger, purge_tenant
    from shared.tenants import find_tenant

    if not args.yes:
        print(
            f"sightline: purging tenant {args.name!r} erases all its jobs and batches and "
            "cannot be undone; run again with --yes",
            file=sys.stderr,
        )
        return 2
    settings = Settings()
    engine = create_engine_for(settings)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            tenant_id = find_tenant(session, args.name).id
        eraser = Eraser(
            sessions,
            create_celery(settings),
            JobFeed.from_url(settings.broker_url),
            settings.retention_chunk,
        )
        erased = purge_tenant(eraser, tenant_id, Purger(operator=args.operator or _login()))
    except LookupError as exc:
        print(f"sightline: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"tenant": args.name, "tenant_id": str(tenant_id), "jobs": erased}))
    else:
        print(f"purged tenant {args.name!r}: {erased} jobs erased (recorded in the purge audit)")
    return 0
