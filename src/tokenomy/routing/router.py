"""Which deployments serve a call, in what order: preferences, prices, health and needs.

The pipeline asks the router once per call for its ranked candidates (cached on the call,
so the ledger's worst-case hold and the attempts see the same list), then reports each
attempt's outcome so the health board and breakers learn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from tokenomy.billing.call_pricing import CallPricer, batch_priced, wants_batch
from tokenomy.billing.money import Currency
from tokenomy.core.call import Call, CallKey
from tokenomy.core.errors import InvalidRequest
from tokenomy.core.registry import Deployment
from tokenomy.routing import affinity
from tokenomy.routing.health import HealthBoard
from tokenomy.routing.power import MILLION, Placement, Region, energy_usd, latency_tolerant, place
from tokenomy.routing.preferences import (
    Candidate,
    Needs,
    Preferences,
    parse_preferences,
    rank,
    request_parameters,
)

#: The call's routing preferences (its ``provider`` object over the defaults).
PREFS = CallKey[Preferences]("routing.prefs")


class Router:
    def __init__(
        self,
        pricer: CallPricer,
        health: HealthBoard,
        default: Preferences,
        *,
        default_max_output: int,
        regions: dict[str, Region] | None = None,
        rtt_s: dict[str, float] | None = None,
        spread: bool = False,
    ) -> None:
        #: Equally priced deployments shared at random by weight (None: heaviest first).
        self._rng = random.Random() if spread else None
        self.regions = regions or {}
        self._rtt = rtt_s or {}
        self.pricer = pricer
        self.health = health
        self.default = default
        self.default_max_output = default_max_output
        self._candidates: dict[str, tuple[float, Candidate]] = {}

    def prepare(self, call: Call) -> str:
        """Parse the call's routing preferences; returns the model name to resolve."""
        base, prefs = parse_preferences(call.body.get("provider"), call.model, self.default)
        if prefs is not self.default:  # most calls: the defaults, read from the router
            call.put(PREFS, prefs)
        return base

    def ranked(self, call: Call, needs_caps: frozenset[str]) -> list[Deployment]:
        """The deployments to try, best first (computed once per call)."""
        cached = call.ranked
        if cached is not None:
            return list(cached)
        assert call.route is not None
        deps = call.route.deployments
        prefs = call.get(PREFS) or self.default
        now = datetime.now(UTC)
        out = self._output_tokens(call)
        needs = Needs(
            capabilities=needs_caps,
            prompt_tokens=self.pricer.prompt_estimate(call),
            output_tokens=out[0],
            explicit_output=out[1],
            # Only require_parameters looks at them: not worked out for other requests.
            parameters=request_parameters(call.body) - {"provider", "model", "messages"}
            if prefs.require_parameters
            else frozenset(),
        )
        groups = call.route_groups
        cands: list[Candidate] = []
        if groups is None:
            cands = [self.candidate(d, now) for d in deps]
            best = rank(cands, prefs, self.health, needs, self._rng)
        else:  # model "auto": the router's order of models, each model's own ranked
            best = [
                c
                for _, ds in groups
                for c in rank(
                    [self.candidate(d, now) for d in ds], prefs, self.health, needs, self._rng
                )
            ]
        if len(deps) == 1:  # most models: nothing to look up
            order = list(deps[: len(best)])
        else:
            by_id = {d.id: d for d in deps}
            order = [by_id[c.deployment_id] for c in best]
        if len(order) > 1 and latency_tolerant(call.body) and _placed_by_cost(prefs):
            order = self._by_cost(call, order, needs, now)
        if call.affinity is not None and groups is None:
            # Last: a warm prompt cache saves more than any list-price difference.
            order = affinity.apply(call.affinity, order, cands, prefs, needs, self.health)
        if not order:
            what = ", ".join(sorted(needs_caps)) or call.endpoint
            raise InvalidRequest(
                f"No deployment of the model '{call.model}' can serve this request "
                f"(needs: {what}; the routing preferences and context window also apply).",
                param="model",
            )
        call.ranked = tuple(order)
        return order

    def _by_cost(
        self, call: Call, order: list[Deployment], needs: Needs, now: datetime
    ) -> list[Deployment]:
        """Latency-tolerant work goes where it costs least in total, within its deadline.

        The total is the call's token price at the deployment (its batch price for a
        batch call, where it has one) plus, for a self-hosted deployment, the energy the
        call burns in its region. Each candidate's figures are left on the call for the
        x-tokenomy-placement header.
        """
        tokens_in = needs.prompt_tokens
        tokens_out = 0 if call.endpoint == "embeddings" else needs.output_tokens
        if not needs.explicit_output and call.endpoint != "embeddings":
            tokens_out = self.default_max_output
        placed = self.placements(order, tokens_in, tokens_out, batch=wants_batch(call), now=now)
        ranked = place(True, call.deadline_s, placed)
        call.placement = {p.deployment_id: _header(p, tokens_in, tokens_out) for p in ranked}
        by_id = {d.id: d for d in order}
        return [by_id[p.deployment_id] for p in ranked]

    def placements(
        self,
        deps: Sequence[Deployment],
        tokens_in: int,
        tokens_out: int,
        *,
        batch: bool,
        now: datetime,
        windowed: bool = True,
    ) -> list[Placement]:
        """Each deployment with what a call of these tokens would cost there (token price
        and energy, USD) and how long it would take; ``tokenomy plan`` shows the same
        (not ``windowed``: a day's figure is priced outside any time-of-day window)."""
        placed: list[Placement] = []
        for d in deps:
            region = self.regions.get(d.region or "")
            snap = self.health.snapshot(d.id)
            ttft = snap.ttft_s.at(50) if snap is not None and snap.ttft_s is not None else 0.0
            rtt = self._rtt.get(region.name, 0.0) if region is not None else 0.0
            energy = energy_usd(region, tokens_in + tokens_out) if d.self_hosted else _ZERO
            token = self._token_usd(d, tokens_in, tokens_out, batch, now, windowed)
            resting = snap is not None and snap.resting
            placed.append(Placement(d.id, region, rtt, ttft, token, energy, resting))
        return placed

    def _token_usd(
        self,
        dep: Deployment,
        tokens_in: int,
        tokens_out: int,
        batch: bool,
        now: datetime,
        windowed: bool = True,
    ) -> Decimal | None:
        """What ``dep``'s price charges for the call in USD (first tier, the time-of-day
        window in effect, no promotion: an estimate to compare deployments by, not a
        bill). The window counts: batch work planned for one vendor's off-peak hours
        must go there when they come."""
        c = self.candidate(dep, now)
        if c.input_usd_per_m is None or c.output_usd_per_m is None:
            return None
        v = self.pricer.version(dep, now)
        m = v.batch_multiplier if v is not None and batch_priced(v, batch) else None
        per_m = tokens_in * c.input_usd_per_m + tokens_out * c.output_usd_per_m
        window = v.window_at(now) if v is not None and windowed else None
        if window is not None:
            per_m *= window.multiplier
        cost = (per_m * m if m is not None else per_m) / MILLION
        fee = v.tiers[0].prices.request if v is not None else _ZERO
        if fee:  # a per-request fee is never scaled by the batch multiplier
            rate = Fraction(1)
            if v is not None and v.currency is not Currency.USD:
                rate = self.pricer.rate(v.currency, Currency.USD, now)
            cost += _usd(fee, rate)
        return cost

    def candidate(self, dep: Deployment, now: datetime) -> Candidate:
        """The deployment as routing sees it, with USD prices (refreshed each minute)."""
        hit = self._candidates.get(dep.id)
        ts = now.timestamp()
        if hit is not None and ts - hit[0] < 60:
            return hit[1]
        inp = out = None
        v = self.pricer.version(dep, now)
        if v is not None:
            p = v.tiers[0].prices.resolved()
            rate = Fraction(1)
            if v.currency is not Currency.USD:
                rate = self.pricer.rate(v.currency, Currency.USD, now)
            inp = _usd(p.input, rate)
            out = _usd(p.output, rate)
        c = Candidate(
            deployment_id=dep.id,
            vendor=dep.vendor.key,
            input_usd_per_m=inp,
            output_usd_per_m=out,
            capabilities=dep.capabilities,
            context_length=dep.context_length,
            region=dep.region,
            weight=dep.weight,
            max_output=dep.max_output,
        )
        self._candidates[dep.id] = (ts, c)
        return c

    def _output_tokens(self, call: Call) -> tuple[int, bool]:
        if call.endpoint == "embeddings":
            return 0, False
        cap = call.requested_max_output()
        return (cap, True) if cap is not None else (0, False)

    def succeeded(self, call: Call) -> None:
        dep = call.deployment
        if dep is None:
            return
        ttft = call.ttft_ms / 1000 if call.ttft_ms is not None else None
        tps = None
        if call.usage is not None and call.usage.output_tokens and call.first_token_at:
            gen_s = call.latency_ms / 1000 - (ttft or 0)
            if gen_s > 0:
                tps = call.usage.output_tokens / gen_s
        self.health.get(dep.id).success(ttft, tps)

    def failed(self, dep: Deployment) -> None:
        self.health.get(dep.id).failure()


_ZERO = Decimal(0)


def _placed_by_cost(prefs: Preferences) -> bool:
    """Placement by cost, unless the request ordered its providers or sorts by speed."""
    return not prefs.order and prefs.sort in (None, "price")


def _header(p: Placement, tokens_in: int, tokens_out: int) -> str:
    """x-tokenomy-placement: the estimate the choice was made on, in USD."""
    return (
        f"region={p.region.name if p.region else '-'}; input_tokens={tokens_in}; "
        f"output_tokens={tokens_out}; token_usd={_plain(p.token_usd)}; "
        f"energy_usd={_plain(p.energy_usd)}; total_usd={_plain(p.total_usd)}"
    )


def _plain(d: Decimal | None) -> str:
    return "unknown" if d is None else format(d.normalize(), "f")


def _usd(price: Decimal, rate: Fraction) -> Decimal:
    if rate == 1:
        return price
    return Decimal(price) * Decimal(rate.numerator) / Decimal(rate.denominator)
