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
        "-c", "--config", metavar="FILE", help="with --model: the config (default: packaged)"
    )
    p.add_argument(
        "--model",
        help="also show where latency-tolerant work of this model goes: each deployment's "
        "token cost and (self-hosted) energy cost for the volume",
    )
    p.add_argument(
        "--output-per-call",
        type=_decimal,
        help="output tokens of each call, for --model (default: a quarter of tokens per call)",
    )
    p.add_argument(
        "--tier", choices=("standard", "batch"), default="standard", help="price tier, --model"
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
    if args.model:
        print()
        print(placement_table(args, result))
    return 0


def placement_table(args: argparse.Namespace, p: Plan) -> str:
    """Where flex/batch work of ``args.model`` goes, and why: token and energy cost a day."""
    from datetime import UTC, datetime

    from tokenomy.billing.call_pricing import CallPricer
    from tokenomy.billing.catalog import PriceBook
    from tokenomy.billing.fx import FxTable
    from tokenomy.cli.common import config_from
    from tokenomy.core.errors import NotFound
    from tokenomy.gateway.registry import build_registry
    from tokenomy.routing.health import HealthBoard
    from tokenomy.routing.power import Region, place
    from tokenomy.routing.preferences import Preferences
    from tokenomy.routing.router import Router

    cfg = config_from(args)
    try:
        route = build_registry(cfg).resolve(args.model)
    except NotFound as e:
        fail(e.message)
    out = args.output_per_call if args.output_per_call is not None else p.tokens_per_call / 4
    if not 0 <= out <= p.tokens_per_call:
        fail("--output-per-call must be between 0 and --tokens-per-call")
    tokens_out, tokens_in = int(out), int(p.tokens_per_call - out)
    router = Router(
        CallPricer(PriceBook.load(cfg.prices), FxTable.load(cfg.fx)),
        HealthBoard(),
        Preferences(),
        default_max_output=cfg.server.default_max_output_tokens,
        regions={
            n: Region(n, r.usd_per_kwh, r.kwh_per_m_tokens, r.pue) for n, r in cfg.regions.items()
        },
        rtt_s={n: r.rtt_ms / 1000 for n, r in cfg.regions.items()},
    )
    placed = router.placements(
        route.deployments,
        tokens_in,
        tokens_out,
        batch=args.tier == "batch",
        now=datetime.now(UTC),
        windowed=False,  # a day's cost: not the price window of this instant
    )
    ranked = place(True, None, placed)
    own = {d.id for d in route.deployments if d.self_hosted}
    calls = p.calls_per_day
    lines = [
        f"{route.name}, latency-tolerant, {args.tier} tier: {_n(calls)} calls/day of "
        f"{tokens_in:,} input + {tokens_out:,} output tokens (* = the choice)",
        f"  {'deployment':<32} {'region':<10} {'self-hosted':<11} {'token USD/day':>16} "
        f"{'energy USD/day':>16} {'total USD/day':>16}",
    ]
    for i, c in enumerate(ranked):
        region = c.region.name if c.region else "-"
        hosted = "yes" if c.deployment_id in own else "no"
        lines.append(
            f"{'*' if i == 0 else ' '} {c.deployment_id:<32} {region:<10} {hosted:<11} "
            f"{_per_day(c.token_usd, calls):>16} {_per_day(c.energy_usd, calls):>16} "
            f"{_per_day(c.total_usd, calls):>16}"
        )
    return "\n".join(lines)


def _per_day(per_call: Decimal | None, calls: Decimal) -> str:
    return "unknown" if per_call is None else _money(per_call * calls, "USD", 2)


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
