"""``sightline tenants``: list tenants, set their weight, see their share of work."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from shared.settings import Settings
from shared.tenants import SHARE_WINDOW


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
    from shared.tenants import shares

    engine = create_engine_for(Settings())
    try:
        with session_factory(engine)() as session:
            rows = shares(session, utcnow() - timedelta(minutes=args.minutes))
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
    tenants = commands.add_parser("tenants", help="tenants: weights and shares of work")
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
    share.add_argument(
        "--minutes", type=float, default=SHARE_WINDOW.total_seconds() / 60, help="default 15"
    )
    share.add_argument("--json", action="store_true", help="print a JSON list")
    share.set_defaults(run=_shares)
