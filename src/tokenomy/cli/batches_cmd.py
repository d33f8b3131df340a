"""``tokenomy batches list|show|cancel``: batch jobs as the database has them."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from tokenomy.batches.objects import batch_object
from tokenomy.billing.call_pricing import units
from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.store.batches import ENDED, BatchStore


def register(sub: Any) -> None:
    p = sub.add_parser("batches", help="list, show or cancel batch jobs")
    cmds = p.add_subparsers(dest="batches_cmd", required=True)
    ls = cmds.add_parser("list", help="batches, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--owner", help="only this org's (or house key's) batches")
    show = cmds.add_parser("show", help="one batch: status, counts, held and spent")
    show.add_argument("batch_id")
    cancel = cmds.add_parser(
        "cancel", help="cancel a batch (a running gateway ends its lines and releases the hold)"
    )
    cancel.add_argument("batch_id")
    for c in (ls, show, cancel):
        add_config_arg(c)
        c.add_argument("--json", action="store_true", help="print OpenAI's batch objects")
    ls.set_defaults(func=list_batches)
    show.set_defaults(func=show_batch)
    cancel.set_defaults(func=cancel_batch)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _obj(store: BatchStore, row: dict[str, Any]) -> dict[str, Any]:
    return batch_object(row, *store.counts(row["id"]))


def list_batches(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        store = BatchStore(engine)
        objs = [_obj(store, r) for r in store.page(args.owner, after=None, limit=args.limit)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(objs, indent=2))
        return 0
    if not objs:
        print("no batches")
    for b in objs:
        rc = b["request_counts"]
        print(
            f"{b['id']}  {b['status']:<11} {_when(b['created_at'])}  {b['endpoint']:<22} "
            f"{rc['completed']}/{rc['total']} done, {rc['failed']} failed"
        )
    return 0


def show_batch(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        store = BatchStore(engine)
        row = store.get(args.batch_id)
        if row is None:
            fail(f"no batch {args.batch_id}", 1)
        b, spent = _obj(store, row), store.spent(row["id"])
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**b, "held_nanos": row["held_nanos"], "spent_nanos": spent}, indent=2))
        return 0
    rc = b["request_counts"]
    print(f"batch      {b['id']} ({b['status']})")
    print(f"owner      {row['owner']} (key {row['key_id']})")
    print(f"endpoint   {b['endpoint']}, input {b['input_file_id']}")
    print(f"requests   {rc['total']}: {rc['completed']} completed, {rc['failed']} failed")
    print(f"held       {units(row['held_nanos'])} at creation (worst case, batch prices)")
    print(f"spent      {units(spent)}")
    for name in ("created_at", "in_progress_at", "expires_at", "completed_at", "cancelled_at"):
        if b.get(name):
            print(f"{name:<10} {_when(b[name])}")
    for kind in ("output_file_id", "error_file_id"):
        if b.get(kind):
            print(f"{kind:<10} {b[kind]}")
    for e in (b.get("errors") or {}).get("data", []):
        print(f"error      line {e['line']}: {e['code']}: {e['message']}")
    _print_plan(b["tokenomy"])
    return 0


def _print_plan(extra: dict[str, Any]) -> None:
    """The plan made at creation: when and where it runs, its cost and saving."""
    plan = extra.get("plan")
    if plan:
        cur = plan["currency"]
        print(f"plan       {plan['reason']}")
        start, latest = _when(plan["expected_start_at"]), _when(plan["latest_start_at"])
        print(f"  start    {start} UTC (latest {latest})")
        rate = plan["lines_per_second"]
        print(f"  finish   {_when(plan['expected_finish_at'])} UTC at {rate} lines/s")
        window = f", price window {plan['price_window']}" if plan.get("price_window") else ""
        print(f"  cost     {plan['expected_cost']} {cur} expected (batch prices{window})")
        print(
            f"  saving   {plan['expected_saving']} {cur} ({plan['saving_percent']}%) against "
            f"{plan['cost_now_interactive']} {cur} now at interactive prices"
        )
        for p in plan["placements"]:
            print(f"  where    {p['lines']} lines of {p['model']} on {p['deployment']} "
                  f"(region {p['region'] or '-'})")  # fmt: skip
    vb = extra.get("vendor_batch")
    if vb:
        print(f"vendor     {vb['vendor']} batch {vb['id']} ({vb['status']}) via {vb['deployment']}")


def cancel_batch(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        store = BatchStore(engine)
        row = store.get(args.batch_id)
        if row is None:
            fail(f"no batch {args.batch_id}", 1)
        if row["status"] in ENDED:
            fail(f"batch {args.batch_id} is {row['status']}: it cannot be cancelled", 1)
        store.transition(
            row["id"],
            ["validating", "in_progress"],
            {"status": "cancelling", "cancelling_at": int(time.time())},
        )
        row = store.get(args.batch_id)
        assert row is not None
    finally:
        engine.dispose()
    print(f"{args.batch_id}: {row['status']}")
    return 0
