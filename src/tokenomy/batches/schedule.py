"""When and where a batch runs: the cheapest start inside its completion window.

A batch's lines are grouped by the deployments that may serve them. At every candidate
start (now, and each instant before the latest start at which a price window or a
promotion of one of those deployments opens or closes) the run is priced as it would
unfold at the measured throughput: each stretch of the run between two price changes
at the prices then in effect, each group on the deployment cheapest at that moment
(token price at batch prices, plus the power a self-hosted deployment burns in its
region). The cheapest start wins; a tie goes to the earliest, so a batch with nothing
to gain runs at once. The latest start is the one that still ends inside the window at
the measured throughput with a safety factor, counting the lines already waiting.

The plan's costs are estimates: each line's prompt at the usual bytes-per-token figure
and its whole output cap (``max_tokens``, else the deployment's or the server's cap).
What a line is billed is what it used, at the prices of the instant it ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import pairwise
from typing import Any

from tokenomy.billing.call_pricing import CallPricer, batch_priced, units
from tokenomy.billing.money import Currency, round_half_up_fraction
from tokenomy.billing.pricing import exact_cost_nanos
from tokenomy.core.registry import Deployment
from tokenomy.core.usage import Usage
from tokenomy.routing.power import Region, energy_usd

#: Planned duration is stretched by this much when working out the latest start.
SAFETY = Fraction(5, 4)
#: And this much slack (seconds) is kept before the window ends.
MARGIN_S = 300


@dataclass(slots=True)
class LineGroup:
    """Lines that the same deployments may serve: how many, and their token estimates."""

    deployments: tuple[Deployment, ...]
    model: str
    lines: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def add(self, tokens_in: int, tokens_out: int) -> None:
        self.lines += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out


@dataclass(slots=True)
class Groups:
    """A batch's lines, grouped as they are checked (kept small: one entry per model)."""

    by_deps: dict[tuple[str, ...], LineGroup] = field(default_factory=dict)

    def add(self, model: str, deps: Iterable[Deployment], tokens_in: int, tokens_out: int) -> None:
        ds = tuple(deps)
        key = tuple(d.id for d in ds)
        g = self.by_deps.get(key)
        if g is None:
            g = self.by_deps[key] = LineGroup(ds, model)
        g.add(tokens_in, tokens_out)

    @property
    def lines(self) -> int:
        return sum(g.lines for g in self.by_deps.values())


@dataclass(frozen=True, slots=True)
class Plan:
    """When a batch should start and end, what it should cost, and what it saves."""

    start: int  # epoch seconds
    finish: int
    latest_start: int
    lines_per_s: float
    currency: str
    cost_nanos: int  # at batch prices, at the planned time and place
    now_interactive_nanos: int  # the same lines now, at interactive (standard) prices
    window: str | None  # the price window in effect at the planned start, if any
    reason: str
    placements: tuple[tuple[str, str, str | None, int], ...]  # model, deployment, region, lines

    def as_json(self) -> dict[str, Any]:
        saving = self.now_interactive_nanos - self.cost_nanos
        return {
            "expected_start_at": self.start,
            "expected_finish_at": self.finish,
            "latest_start_at": self.latest_start,
            "lines_per_second": round(self.lines_per_s, 3),
            "currency": self.currency,
            "expected_cost": units(self.cost_nanos),
            "cost_now_interactive": units(self.now_interactive_nanos),
            "expected_saving": units(saving),
            "saving_percent": (
                round(100 * saving / self.now_interactive_nanos, 1)
                if self.now_interactive_nanos
                else 0.0
            ),
            "price_window": self.window,
            "reason": self.reason,
            "placements": [
                {"model": m, "deployment": d, "region": r, "lines": n}
                for m, d, r, n in self.placements
            ],
        }


class Planner:
    """Prices a batch's groups at instants and picks its start."""

    def __init__(self, pricer: CallPricer, regions: Mapping[str, Region]) -> None:
        self.pricer = pricer
        self.regions = regions

    def plan(
        self,
        groups: Groups,
        currency: Currency,
        now: float,
        expires_at: float,
        lines_per_s: float,
        backlog: int = 0,
        *,
        wait: bool = True,
    ) -> Plan:
        """The plan of a batch created at ``now`` that must end by ``expires_at``
        (``wait``: may start later; else it starts now, and is only priced)."""
        total = groups.lines
        rate = max(lines_per_s, 1e-6)
        duration = (total + backlog) / rate
        latest = expires_at - float(SAFETY) * duration - MARGIN_S
        t0 = datetime.fromtimestamp(now, UTC)
        if latest <= now or not wait:
            cands = [t0]
        else:
            until = datetime.fromtimestamp(latest, UTC)
            cands = [t0, *sorted(self._changes(groups, t0, until))]
        best_t, best_cost = t0, self._run_cost(groups, currency, t0, duration)
        for t in cands[1:]:
            c = self._run_cost(groups, currency, t, duration)
            if c < best_cost:  # strictly cheaper: ties keep the earlier start
                best_t, best_cost = t, c
        start = best_t.timestamp()
        now_std = self._cost_at(groups, currency, t0, batch=False)
        placements = tuple(
            (g.model, d.id, d.region, g.lines)
            for g in groups.by_deps.values()
            for d in [self._cheapest(g, currency, best_t, batch=True)[1]]
        )
        window = next(
            (
                w.name
                for g in groups.by_deps.values()
                for d in g.deployments
                if (v := self.pricer.version(d, best_t)) is not None
                and (w := v.window_at(best_t)) is not None
            ),
            None,
        )
        if not wait:
            reason = "now: handed to the vendor's batch API, whose own window starts then"
        elif latest <= now:
            reason = "now: the completion window leaves no time to wait"
        elif best_t == t0:
            reason = "now: no cheaper time before the latest start"
        else:
            reason = "later: cheaper prices start then"
        return Plan(
            start=int(start),
            finish=int(start + duration) + 1,
            latest_start=int(max(latest, now)),
            lines_per_s=rate,
            currency=currency.value,
            cost_nanos=round_half_up_fraction(best_cost),
            now_interactive_nanos=round_half_up_fraction(now_std),
            window=window,
            reason=reason,
            placements=placements,
        )

    def _changes(self, groups: Groups, after: datetime, until: datetime) -> set[datetime]:
        """Instants in (after, until] at which a deployment's applicable price may change."""
        days = (until - after).days + 1
        out: set[datetime] = set()
        for g in groups.by_deps.values():
            for d in g.deployments:
                v = self.pricer.version(d, after)
                if v is None:
                    continue
                for w in v.windows:
                    out.update(t for t in w.boundaries(after, days) if t <= until)
                for p in v.promotions:
                    out.update(
                        t for t in (p.starts, p.ends) if t is not None and after < t <= until
                    )
                if v.until is not None and after < v.until <= until:
                    out.add(v.until)
        return {t.astimezone(UTC) for t in out}

    def _run_cost(
        self, groups: Groups, currency: Currency, start: datetime, duration: float
    ) -> Fraction:
        """The batch's cost when it runs from ``start`` for ``duration`` seconds: each
        stretch between price changes priced at its own prices, lines spread evenly."""
        if duration <= 0:
            return self._cost_at(groups, currency, start)
        end = start + timedelta(seconds=duration)
        cuts = sorted(t for t in self._changes(groups, start, end) if t < end)
        total = Fraction(0)
        for a, b in pairwise([start, *cuts, end]):
            share = Fraction((b - a).total_seconds()) / Fraction(duration)
            total += share * self._cost_at(groups, currency, a)
        return total

    def _cost_at(
        self, groups: Groups, currency: Currency, at: datetime, *, batch: bool = True
    ) -> Fraction:
        """Every group's cost where it is cheapest, at the prices in effect at ``at``."""
        cost = Fraction(0)
        for g in groups.by_deps.values():
            cost += self._cheapest(g, currency, at, batch=batch)[0]
        return cost

    def _cheapest(
        self, g: LineGroup, currency: Currency, at: datetime, *, batch: bool
    ) -> tuple[Fraction, Deployment]:
        """The group's cost (token price, in ``currency``) on the deployment where it is
        cheapest at ``at`` counting power, and that deployment."""
        best: tuple[Fraction, Fraction, Deployment] | None = None
        for d in g.deployments:
            price = self._price(g, d, currency, at, batch)
            power = self._power(g, d, currency, at)
            if best is None or price + power < best[0] + best[1]:
                best = (price, power, d)
        assert best is not None
        return best[0], best[2]

    def _price(
        self, g: LineGroup, d: Deployment, currency: Currency, at: datetime, batch: bool
    ) -> Fraction:
        v = self.pricer.version(d, at)
        if v is None or not g.lines:
            return Fraction(0)
        # One average line, times the lines: the estimate need not price every line.
        usage = Usage(
            input_tokens=-(-g.tokens_in // g.lines), output_tokens=-(-g.tokens_out // g.lines)
        )
        num, den = exact_cost_nanos(v, usage, at=at, batch=batch_priced(v, batch))
        cost = Fraction(num, den) * g.lines
        if v.currency is not currency:
            cost *= self.pricer.rate(v.currency, currency, at)
        return cost

    def _power(self, g: LineGroup, d: Deployment, currency: Currency, at: datetime) -> Fraction:
        if not d.self_hosted:
            return Fraction(0)
        usd = energy_usd(self.regions.get(d.region or ""), g.tokens_in + g.tokens_out)
        if usd is None:
            return Fraction(0)
        cost = Fraction(usd) * 10**9
        if currency is not Currency.USD:
            cost *= self.pricer.rate(Currency.USD, currency, at)
        return cost
