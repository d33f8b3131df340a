"""``tokenomy dead-letters``: the records the usage writer could not store, newest first."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from tokenomy.cli.common import add_config_arg, config_from, database
from tokenomy.store.dead_letters import list_dead_letters


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dead-letters",
        help="show usage records the database refused (kept whole, with the reason)",
    )
    add_config_arg(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="print JSON, each record whole")
    p.set_defaults(func=show)


def show(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        letters = list_dead_letters(engine, max(1, args.limit))
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(letters, indent=2))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for d in letters:
        at = datetime.fromtimestamp(d["ts_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        tables = ",".join(r["table"] for r in d["record"])
        print(f"{at}  {d['request_id'] or '-'}  [{tables}]  {d['reason']}")
    return 0
