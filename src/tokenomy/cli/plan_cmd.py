"""``tokenomy plan``: calls, GPUs, energy and power cost for a daily token volume."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from tokenomy.cli.common import fail
from tokenomy.routing.power import DEFAULT_PUE, Plan, PowerPrice, plan

#: Illustrative prices when none are given: western Chinese green power and a US grid.
DEFAULT_PRICES = ("cn-west=0.20CNY", "us=1.00CNY")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="capacity and power cost for a daily token volume",
        description="How many calls per second, GPUs, kWh and how much power money a daily "
        "token volume takes, per region. Power only: hardware and staff come on top.",
    )
    p.add_argument("--tokens-per-day", type=_decimal, required=True, help="e.g. 120e12")
    p.add_argument("--tokens-per-call", type=_decimal, default=Decimal(2000))
    p.add_argument(
        "--tps-per-gpu",
        type=_decimal,
        default=Decimal(2000),
        help="output tokens per second one GPU sustains (default 2000)",
    )
    p.add_argument(
        "--gpu-watts", type=_decimal, default=Decimal(700), help="power per GPU (default 700)"
    )
    p.add_argument(
        "--pue",
        type=_decimal,
        default=DEFAULT_PUE,
        help=f"facility power over IT power (default {DEFAULT_PUE})",
    )
    p.add_argument(
        "--utilization",
        type=_decimal,
        default=Decimal(1),
        help="average share of the rated tokens/s actually sustained (default 1)",
    )
    p.add_argument(
        "--power-price",
        action="append",
        metavar="REGION=PRICE[CNY|USD]",
        help="electricity price per kWh, repeatable (default: "
        + " ".join(DEFAULT_PRICES)
        + "); USD when no currency is given",
    )
    p.add_argument(
        "--cny-per-usd",
        type=_decimal,
        help="exchange rate for the USD columns (default: the packaged FX table)",
    )
    p.set_defaults(func=run)


def _decimal(s: str) -> Decimal:
    try:
        d = Decimal(s.replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"not a number: {s!r}")
    return d


def _cny_per_usd() -> Decimal:
    from tokenomy.billing.fx import FxTable
    from tokenomy.billing.money import Currency

    r = FxTable.load().rate(Currency.USD, Currency.CNY)
    return Decimal(r.numerator) / Decimal(r.denominator)


def run(args: argparse.Namespace) -> int:
    try:
        prices = [PowerPrice.parse(s) for s in (args.power_price or DEFAULT_PRICES)]
        result = plan(
            args.tokens_per_day,
            args.tokens_per_call,
            args.tps_per_gpu,
            args.gpu_watts,
            prices,
            cny_per_usd=args.cny_per_usd or _cny_per_usd(),
            pue=args.pue,
            utilization=args.utilization,
        )
    except ValueError as e:
        fail(str(e))
    print(render(result, args.gpu_watts, args.tps_per_gpu, args.cny_per_usd or _cny_per_usd()))
    return 0


def render(p: Plan, gpu_watts: Decimal, tps_per_gpu: Decimal, cny_per_usd: Decimal) -> str:
    lines = [
        f"tokens/day        {_n(p.tokens_per_day)}",
        f"tokens/call       {_n(p.tokens_per_call)}",
        f"calls/day         {_n(p.calls_per_day)}",
        f"calls/s           {_n(p.calls_per_s, 1)}",
        f"tokens/s          {_n(p.tokens_per_s, 1)}",
        f"GPUs              {p.gpus:,}  (at {_n(tps_per_gpu)} tokens/s each, "
        f"utilization {p.utilization})",
        f"power draw        {_n(p.kw, 1)} kW  ({_n(gpu_watts)} W per GPU, PUE {p.pue})",
        f"energy/day        {_n(p.kwh_per_day, 1)} kWh",
        f"energy/M tokens   {p.kwh_per_m_tokens:.4f} kWh",
        "",
        f"{'region':<14} {'price/kWh':>12} {'power/day':>20} {'power/M tokens':>15} "
        f"{'USD/day':>16} {'USD/M tokens':>13}",
    ]
    for r in p.rows:
        lines.append(
            f"{r.region:<14} {_money(r.price, r.currency, 3):>12} "
            f"{_money(r.cost_per_day, r.currency, 0):>20} "
            f"{_money(r.cost_per_m_tokens, r.currency, 4):>15} "
            f"{_money(r.cost_per_day_usd, 'USD', 0):>16} "
            f"{_money(r.cost_per_m_tokens_usd, 'USD', 4):>13}"
        )
    lines.append("")
    lines.append(
        f"Power only (often 60-80% of serving cost); USD at {cny_per_usd:.4f} CNY per USD."
    )
    return "\n".join(lines)


def _n(d: Decimal, places: int = 0) -> str:
    q = Decimal(1).scaleb(-places)
    return f"{d.quantize(q):,}"


def _money(d: Decimal, currency: str, places: int) -> str:
    sym = "¥" if currency == "CNY" else "$"
    return sym + _n(d, places)
