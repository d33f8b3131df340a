"""``tokenomy usage``: the analytics views of ``GET /v1/usage`` as tables, CSV or JSON."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from tokenomy.analytics.formatting import money
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.analytics.rollup import Rollups
from tokenomy.analytics.views import VIEWS, ViewError, run_view
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable
from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.gateway.registry import build_registry

_OPTIONS = ("start", "end", "days", "granularity", "group_by", "by", "period", "limit",
            "reference", "window")  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser("usage", help="token usage, rankings, growth, savings, tasks and caching")
    add_config_arg(p)
    p.add_argument("view", nargs="?", default="usage", choices=VIEWS, help="what to show")
    p.add_argument("--start", help="first day (2026-03-01), ISO time or epoch ms")
    p.add_argument("--end", help="last day (inclusive), ISO time or epoch ms (exclusive)")
    p.add_argument("--days", help="days back from the end of today (default 30)")
    p.add_argument("--granularity", help="minute | hour | day | week (default day)")
    p.add_argument("--group-by", dest="group_by", help="comma-separated: model,vendor,org,...")
    p.add_argument("--by", help="share: vendor | country; leaders: a dimension")
    p.add_argument("--period", help="top_models: day | week")
    p.add_argument("--limit", help="how many ranked rows (leaders, top_models, tasks)")
    p.add_argument("--reference", help="savings reference as vendor/model")
    p.add_argument("--window", help="growth: days to fit the doubling time over")
    p.add_argument("--org", help="only this organisation's usage")
    p.add_argument("--key", help="only this key's usage (by key id)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=usage)


def usage(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    engine = database(cfg)
    try:
        # SQLite's one writer is the gateway's too: with a synchronous one, its requests
        # wait through these batches.
        sync = cfg.writer.flush_interval_ms == 0
        Rollups.for_registry(engine, build_registry(cfg), writer_synchronous=sync).refresh()
        params = {o: str(getattr(args, o)) for o in _OPTIONS if getattr(args, o) is not None}
        params["view"] = args.view
        scope = Scope(key_id=args.key, org_id=args.org) if (args.key or args.org) else EVERYONE
        out = run_view(
            engine,
            params,
            book=PriceBook.load(cfg.prices),
            fx=FxTable.load(cfg.fx),
            scope=scope,
        )
    except ViewError as e:
        fail(f"--{e.param.replace('_', '-')}: {e}")
    finally:
        engine.dispose()
    data = out["data"]
    if args.format == "json":
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        rows = _main_rows(data)
        sys.stdout.write(_csv([_flat(r, human=False) for r in rows]))
    else:
        sys.stdout.write(_tables(data))
    return 0


def _when(ms: Any) -> str:
    d = datetime.fromtimestamp(int(ms) / 1000, UTC)
    return d.strftime("%Y-%m-%d") if d.hour == d.minute == 0 else d.strftime("%Y-%m-%d %H:%M")


def _flat(row: dict[str, Any], *, human: bool) -> dict[str, Any]:
    """One level: money by currency into columns, times as dates, percentiles as columns."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_ms") and isinstance(v, int) and v > 10**11:
            out[k[:-3]] = _when(v)
        elif k.endswith("_nanos") and isinstance(v, dict):  # money by currency
            for cur, n in sorted(v.items()):
                # A machine-readable column says it holds integer nanos.
                out[f"{k[:-6]}_{cur}" if human else f"{k}_{cur}"] = money(n, cur) if human else n
        elif k.endswith("_nanos") and isinstance(v, int) and human:
            out[k[:-6]] = money(v, row.get("currency") or "USD")
        elif isinstance(v, dict):
            for kk, vv in v.items():
                out[f"{k}_{kk}"] = _num(vv, human)
        elif isinstance(v, list):
            continue
        else:
            out[k] = _num(v, human)
    return out


def _num(v: Any, human: bool) -> Any:
    if isinstance(v, float):
        return f"{v:.3f}" if human else v
    if isinstance(v, int) and not isinstance(v, bool) and human:
        return f"{v:,}"
    return "" if v is None else v


def _main_rows(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return data
    for name in ("daily", "by_model", "top_tasks"):
        if isinstance(data.get(name), list):
            return list(data[name])
    return [data]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no usage in this range)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(_align(v, w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


def _align(v: str, w: int) -> str:
    numeric = v[:1].isdigit() or (v[:1] in "-+$¥€£" and v[1:2].isdigit())
    return v.rjust(w) if numeric else v.ljust(w)


def _tables(data: Any) -> str:
    if isinstance(data, list):
        return _table([_flat(r, human=True) for r in data])
    head = _flat(data, human=True)
    parts = [_table([{"": k, "value": v} for k, v in head.items()])]
    for name, v in data.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            parts.append(
                f"\n{name.replace('_', ' ')}:\n" + _table([_flat(r, human=True) for r in v])
            )
    return "".join(parts)
