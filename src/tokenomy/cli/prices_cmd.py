"""``tokenomy prices``: the price each catalogued model has now, and when and how it changes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenomy.billing.catalog import PriceBook, PriceNotFound, PriceVersion, PricingError
from tokenomy.billing.money import Currency
from tokenomy.cli.common import add_config_arg, config_from, fail

_SHOWN = ("input", "cached_input", "cache_write", "output", "reasoning", "request")
_HEADER = (
    "vendor",
    "model",
    "cur",
    "input",
    "cached",
    "write",
    "output",
    "request",
    "tiers",
    "active",
    "next change (UTC)",
    "then",
)
_RIGHT = {"input", "cached", "write", "output", "request", "tiers"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "prices",
        help="show catalogued prices in effect now and their next change",
        description="Per-million-token prices of the shortest-prompt tier, with the active "
        "time window and promotion applied; the per-request fee is in units.",
    )
    add_config_arg(p)
    p.add_argument("--vendor", help="only this vendor (e.g. deepseek)")
    p.add_argument("--model", help="only models whose name contains this text")
    p.add_argument("--at", metavar="ISO-INSTANT", help="instant with an offset (default: now)")
    p.add_argument("--currency", choices=[c.value for c in Currency], help="only this currency")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=show)


@dataclass(frozen=True, slots=True)
class _State:
    """The prices in effect at one instant, every multiplier applied."""

    version: PriceVersion
    window: str | None
    promotion: str | None
    prices: dict[str, Decimal]

    @property
    def label(self) -> str:
        return ", ".join(n for n in (self.window, self.promotion) if n) or "-"


@dataclass(frozen=True, slots=True)
class _Row:
    now: _State
    changes_at: datetime | None
    then: _State | None  # None when no price is known from changes_at on


def show(args: argparse.Namespace) -> int:
    at = _instant(args.at)
    book = _book(args)
    rows = list(_rows(book, at, args))
    if args.json:
        print(json.dumps([_as_json(r, at) for r in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        fail(f"no catalogued price matches at {_utc(at)}", code=1)
    print(f"Prices per million tokens at {_utc(at)}")
    _print_table([_cells(r) for r in rows])
    return 0


def _instant(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at {text!r} is not an ISO 8601 instant such as 2026-11-18T10:00:00+08:00")
    if at.tzinfo is None or at.utcoffset() is None:
        fail(f"--at {text!r} has no time zone: add Z or an offset such as +08:00")
    return at


def _book(args: argparse.Namespace) -> PriceBook:
    overrides = config_from(args).prices if args.config else []
    try:
        return PriceBook.load(overrides)
    except (PricingError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        fail(f"invalid price overrides: {e}")


def _rows(book: PriceBook, at: datetime, args: argparse.Namespace) -> Iterator[_Row]:
    vendor = args.vendor.lower() if args.vendor else None
    model = args.model.lower() if args.model else None
    for m in book:
        if vendor is not None and m.vendor.lower() != vendor:
            continue
        if model is not None and model not in m.model.lower():
            continue
        if args.currency is not None and m.currency.value != args.currency:
            continue
        try:
            o = book.outlook(m.vendor, m.model, at, currency=m.currency)
        except PriceNotFound:
            continue
        then = None
        if o.changes_at is not None:
            nxt = o.next_version
            if nxt is None and o.changes_at != o.version.until:
                nxt = o.version
            then = _state(nxt, o.changes_at) if nxt is not None else None
        yield _Row(_state(o.version, at), o.changes_at, then)


def _state(version: PriceVersion, at: datetime) -> _State:
    """Tier 0's prices at ``at``: promotion overrides, fallbacks, then the multipliers."""
    window, promo = version.window_at(at), version.promotion_at(at)
    prices = version.tiers[0].prices
    if promo is not None:
        prices = promo.applied_to(prices)
    prices = prices.resolved()
    scale = (window.multiplier if window else Decimal(1)) * (
        promo.multiplier if promo else Decimal(1)
    )
    shown: dict[str, Decimal] = {}
    for name in _SHOWN:
        value = getattr(prices, name)
        assert value is not None  # resolved() fills every fallback
        shown[name] = value if name == "request" else value * scale
    return _State(
        version=version,
        window=window.name if window else None,
        promotion=promo.name if promo else None,
        prices=shown,
    )


def _plain(d: Decimal) -> str:
    return "0" if d.is_zero() else format(d.normalize(), "f")


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cells(r: _Row) -> dict[str, str]:
    p = r.now.prices
    if r.changes_at is None:
        then = "-"
    elif r.then is None:
        then = "no price known"
    else:
        q = r.then.prices
        then = f"in {_plain(q['input'])} out {_plain(q['output'])}"
        then += f" [{r.then.label}]" if r.then.label != "-" else ""
    return {
        "vendor": r.now.version.vendor,
        "model": r.now.version.model,
        "cur": r.now.version.currency.value,
        "input": _plain(p["input"]),
        "cached": _plain(p["cached_input"]),
        "write": _plain(p["cache_write"]),
        "output": _plain(p["output"]),
        "request": _plain(p["request"]),
        "tiers": str(len(r.now.version.tiers)),
        "active": r.now.label,
        "next change (UTC)": _utc(r.changes_at) if r.changes_at else "-",
        "then": then,
    }


def _print_table(rows: list[dict[str, str]]) -> None:
    widths = {h: max([len(h), *(len(r[h]) for r in rows)]) for h in _HEADER}

    def line(cells: dict[str, str]) -> str:
        parts = [
            cells[h].rjust(widths[h]) if h in _RIGHT else cells[h].ljust(widths[h]) for h in _HEADER
        ]
        return "  ".join(parts).rstrip()

    print(line({h: h for h in _HEADER}))
    for r in rows:
        print(line(r))


def _state_json(s: _State) -> dict[str, Any]:
    return {
        "version_id": s.version.id,
        "window": s.window,
        "promotion": s.promotion,
        "prices": {k: _plain(v) for k, v in s.prices.items()},
    }


def _as_json(r: _Row, at: datetime) -> dict[str, Any]:
    v = r.now.version
    out: dict[str, Any] = {
        "vendor": v.vendor,
        "model": v.model,
        "currency": v.currency.value,
        "at": _utc(at),
        "status": v.status,
        "source": v.source,
        "as_of": v.as_of.isoformat(),
        "tiers": len(v.tiers),
        **_state_json(r.now),
        "next_change": None,
    }
    if r.changes_at is not None:
        nxt: dict[str, Any] = {"at": _utc(r.changes_at)}
        nxt.update(_state_json(r.then) if r.then else {"version_id": None, "prices": None})
        out["next_change"] = nxt
    return out
