"""``tokenomy router export``: an organisation's scored requests as router training rows."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.routing import routerbench
from tokenomy.store import feedback

NAN = float("nan")


def register(rsub: Any) -> None:
    x = rsub.add_parser(
        "export", help="an organisation's scored requests (POST /v1/feedback) as training rows"
    )
    add_config_arg(x)
    x.add_argument("--org", required=True, help="organisation id")
    x.add_argument("--out", required=True, metavar="FILE", help="CSV to write")
    x.set_defaults(func=export_cmd)


def export_cmd(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    pool = cfg.router.pool
    if not pool:
        fail("the config has no router pool (router.pool): nothing maps models to its columns")
    models = tuple(pool)
    column = {name: i for i, name in enumerate(pool.values())}
    engine = database(cfg)
    try:
        scored = feedback.scored(engine, args.org)
    finally:
        engine.dispose()
    rows: list[routerbench.Row] = []
    no_prompt = outside = 0
    for s in scored:
        i = column.get(s.model)
        if i is None:
            outside += 1
            continue
        if not s.prompt:
            no_prompt += 1
            continue
        q = [NAN] * len(models)
        c = [NAN] * len(models)
        q[i] = s.score
        c[i] = s.cost_nanos / 1e9  # in the org's currency
        rows.append(routerbench.Row(s.request_id, "feedback", s.prompt, tuple(q), tuple(c)))
    n = routerbench.write(args.out, models, rows)
    print(
        f"wrote {n} rows to {args.out} ({no_prompt} scored requests without a prompt, "
        f"{outside} served by models outside the pool, skipped)",
        file=sys.stderr,
    )
    return 0
