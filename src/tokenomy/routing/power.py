"""Power-aware placement and the capacity arithmetic behind ``tokenomy plan``.

Electricity is most of what a served token costs (60–80% by common estimates), and its
price differs several-fold between regions (western Chinese green power at 0.13–0.3
CNY/kWh against 0.8–1.2 CNY/kWh-equivalent in the US). A region's *cost floor* is the
power alone: energy per million tokens × PUE × price per kWh; hardware, staff and margin
come on top. Latency-tolerant traffic goes to the cheapest floor that still meets its
deadline; interactive traffic stays on the nearest region.

Assumptions, all explicit inputs: PUE (facility power over IT power) defaults to 1.2, a
modern hyperscale figure; GPUs draw their rated watts while serving; ``utilization`` is
the share of peak tokens/s sustained on average (1 = the rated figure, no idle headroom).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

DEFAULT_PUE = Decimal("1.2")
SECONDS_PER_DAY = Decimal(86400)
MILLION = Decimal(1_000_000)
#: Joules in one kilowatt-hour.
J_PER_KWH = Decimal(3_600_000)
#: Service tiers that may wait for cheaper power (OpenAI's ``flex``, batch traffic).
TOLERANT_TIERS = frozenset({"flex", "batch", "background", "low"})


def to_usd(price: Decimal, currency: str, cny_per_usd: Decimal) -> Decimal:
    """A price in USD; ``currency`` is ``USD`` or ``CNY``."""
    cur = currency.upper()
    if cur == "USD":
        return price
    if cur == "CNY":
        return price / cny_per_usd
    raise ValueError(f"unknown currency {currency!r}: use USD or CNY")


def kwh_per_million_tokens(gpu_watts: Decimal, tokens_per_s_per_gpu: Decimal) -> Decimal:
    """IT energy (before PUE) to produce a million tokens on one GPU at its rated rate."""
    return gpu_watts / tokens_per_s_per_gpu * MILLION / J_PER_KWH


@dataclass(frozen=True, slots=True)
class Region:
    """A place deployments run, with its power price (USD per kWh) and energy per token."""

    name: str
    usd_per_kwh: Decimal
    #: IT energy per million tokens served there; None when unknown.
    kwh_per_m_tokens: Decimal | None = None
    pue: Decimal = DEFAULT_PUE

    @property
    def cost_floor_usd_per_m(self) -> Decimal | None:
        """Power cost of a million tokens here: energy × PUE × price."""
        if self.kwh_per_m_tokens is None:
            return None
        return self.kwh_per_m_tokens * self.pue * self.usd_per_kwh


def energy_usd(region: Region | None, tokens: int) -> Decimal | None:
    """What the power for ``tokens`` tokens costs in ``region`` (None: floor unknown)."""
    floor = region.cost_floor_usd_per_m if region is not None else None
    return None if floor is None else floor * tokens / MILLION


@dataclass(frozen=True, slots=True)
class Placement:
    """One deployment as placement sees it: where it is, how long it would take, and what
    the work would cost there, in USD.

    ``token_usd`` is what the deployment's price charges for the call (at the tier that
    applies); ``energy_usd`` the power a self-hosted deployment burns for it (zero for a
    vendor, whose power is in its price). None: not known.
    """

    deployment_id: str
    region: Region | None
    #: Network round trip from the client's edge to the region, in seconds.
    rtt_s: float
    #: Expected queueing plus generation time there for this request, in seconds.
    service_s: float = 0.0
    token_usd: Decimal | None = Decimal(0)
    energy_usd: Decimal | None = Decimal(0)
    #: A resting (breaker open) deployment goes last whatever it costs.
    resting: bool = False

    @property
    def finish_s(self) -> float:
        return self.rtt_s + self.service_s

    @property
    def total_usd(self) -> Decimal | None:
        if self.token_usd is None or self.energy_usd is None:
            return None
        return self.token_usd + self.energy_usd


def latency_tolerant(body: Mapping[str, Any]) -> bool:
    """Is the request marked as able to wait (``service_tier`` flex/batch, or ``priority``)?"""
    tier = body.get("service_tier") or body.get("priority")
    return isinstance(tier, str) and tier.lower() in TOLERANT_TIERS


def place(
    request_is_latency_tolerant: bool,
    deadline: float | None,
    candidates: Sequence[Placement],
) -> list[Placement]:
    """Candidates best first: the first is the choice, the rest are fallbacks.

    Interactive: nearest first (lowest round trip), cheaper power breaking ties.
    Latency-tolerant: among those finishing within ``deadline`` seconds (all, if None),
    the least total cost first (token price plus energy; unknown totals after known
    ones), then nearest; those that would miss the deadline follow, fastest first.
    Resting deployments come last either way.
    """
    if not request_is_latency_tolerant:
        return sorted(candidates, key=lambda p: (p.resting, p.rtt_s, _floor_key(p)))
    meets = [p for p in candidates if deadline is None or p.finish_s <= deadline]
    late = [p for p in candidates if deadline is not None and p.finish_s > deadline]
    meets.sort(key=lambda p: (p.resting, _total_key(p), p.rtt_s))
    late.sort(key=lambda p: (p.resting, p.finish_s))
    return meets + late


def _total_key(p: Placement) -> tuple[int, Decimal]:
    t = p.total_usd
    return (0, t) if t is not None else (1, Decimal(0))


def _floor_key(p: Placement) -> tuple[int, Decimal]:
    f = p.region.cost_floor_usd_per_m if p.region is not None else None
    return (0, f) if f is not None else (1, Decimal(0))


@dataclass(frozen=True, slots=True)
class PowerPrice:
    region: str
    price: Decimal
    currency: str

    @classmethod
    def parse(cls, spec: str) -> PowerPrice:
        """``REGION=PRICE`` with an optional currency suffix: ``gansu=0.2CNY``, ``us=0.14``."""
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"expected REGION=PRICE[CNY|USD], got {spec!r}")
        value = value.strip().upper()
        currency = "USD"
        for cur in ("CNY", "USD"):
            if value.endswith(cur):
                value, currency = value[: -len(cur)].strip(), cur
        try:
            price = Decimal(value)
        except ArithmeticError:
            raise ValueError(f"not a price: {spec!r}") from None
        if not price.is_finite() or price < 0:
            raise ValueError(f"not a price: {spec!r}")
        return cls(name.strip(), price, currency)


@dataclass(frozen=True, slots=True)
class PlanRow:
    region: str
    price: Decimal
    currency: str
    cost_per_day: Decimal
    cost_per_m_tokens: Decimal
    cost_per_day_usd: Decimal
    cost_per_m_tokens_usd: Decimal


@dataclass(frozen=True, slots=True)
class Plan:
    tokens_per_day: Decimal
    tokens_per_call: Decimal
    calls_per_day: Decimal
    calls_per_s: Decimal
    tokens_per_s: Decimal
    gpus: int
    kw: Decimal
    kwh_per_day: Decimal
    kwh_per_m_tokens: Decimal
    pue: Decimal
    utilization: Decimal
    rows: tuple[PlanRow, ...]


def plan(
    tokens_per_day: Decimal,
    tokens_per_call: Decimal,
    tps_per_gpu: Decimal,
    gpu_watts: Decimal,
    prices: Sequence[PowerPrice],
    *,
    cny_per_usd: Decimal,
    pue: Decimal = DEFAULT_PUE,
    utilization: Decimal = Decimal(1),
) -> Plan:
    """Calls, GPUs, energy and power cost for a daily token volume (facility power, PUE)."""
    for name, v in (
        ("tokens per call", tokens_per_call),
        ("tokens/s per GPU", tps_per_gpu),
        ("utilization", utilization),
        ("PUE", pue),
    ):
        if v <= 0:
            raise ValueError(f"{name} must be positive")
    if tokens_per_day < 0 or gpu_watts < 0:
        raise ValueError("tokens per day and GPU watts must not be negative")
    calls_per_day = tokens_per_day / tokens_per_call
    tokens_per_s = tokens_per_day / SECONDS_PER_DAY
    gpus = math.ceil(tokens_per_s / (tps_per_gpu * utilization))
    kw = Decimal(gpus) * gpu_watts / 1000 * pue
    kwh_per_day = kw * 24
    millions = tokens_per_day / MILLION
    kwh_per_m = kwh_per_day / millions if millions else Decimal(0)
    rows = []
    for p in prices:
        per_day = kwh_per_day * p.price
        per_m = kwh_per_m * p.price
        rows.append(
            PlanRow(
                region=p.region,
                price=p.price,
                currency=p.currency,
                cost_per_day=per_day,
                cost_per_m_tokens=per_m,
                cost_per_day_usd=to_usd(per_day, p.currency, cny_per_usd),
                cost_per_m_tokens_usd=to_usd(per_m, p.currency, cny_per_usd),
            )
        )
    return Plan(
        tokens_per_day=tokens_per_day,
        tokens_per_call=tokens_per_call,
        calls_per_day=calls_per_day,
        calls_per_s=calls_per_day / SECONDS_PER_DAY,
        tokens_per_s=tokens_per_s,
        gpus=gpus,
        kw=kw,
        kwh_per_day=kwh_per_day,
        kwh_per_m_tokens=kwh_per_m,
        pue=pue,
        utilization=utilization,
        rows=tuple(rows),
    )
