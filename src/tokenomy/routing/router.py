"""Which deployments serve a call, in what order: preferences, prices, health and needs.

The pipeline asks the router once per call for its ranked candidates (cached on the call,
so the ledger's worst-case hold and the attempts see the same list), then reports each
attempt's outcome so the health board and breakers learn.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from tokenomy.billing.money import Currency
from tokenomy.errors import InvalidRequest
from tokenomy.gateway.call import Call
from tokenomy.gateway.registry import Deployment
from tokenomy.ledger.biller import Biller
from tokenomy.routing.auto import GROUPS
from tokenomy.routing.health import HealthBoard
from tokenomy.routing.power import Placement, Region, latency_tolerant, place
from tokenomy.routing.preferences import (
    Candidate,
    Needs,
    Preferences,
    parse_preferences,
    rank,
    request_parameters,
)

PREFS = "routing.prefs"
#: Seconds a latency-tolerant call may take (X-Tokenomy-Deadline).
DEADLINE = "routing.deadline"
RANKED = "routing.ranked"


class Router:
    def __init__(
        self,
        biller: Biller,
        health: HealthBoard,
        default: Preferences,
        *,
        default_max_output: int,
        regions: dict[str, Region] | None = None,
        rtt_s: dict[str, float] | None = None,
    ) -> None:
        self.regions = regions or {}
        self._rtt = rtt_s or {}
        self.biller = biller
        self.health = health
        self.default = default
        self.default_max_output = default_max_output
        self._candidates: dict[str, tuple[float, Candidate]] = {}

    def prepare(self, call: Call) -> str:
        """Parse the call's routing preferences; returns the model name to resolve."""
        base, prefs = parse_preferences(call.body.get("provider"), call.model, self.default)
        call.extras[PREFS] = prefs
        return base

    def ranked(self, call: Call, needs_caps: frozenset[str]) -> list[Deployment]:
        """The deployments to try, best first (computed once per call)."""
        cached = call.extras.get(RANKED)
        if cached is not None:
            return list(cached)
        assert call.route is not None
        deps = call.route.deployments
        prefs: Preferences = call.extras.get(PREFS) or self.default
        now = datetime.now(UTC)
        out = self._output_tokens(call)
        needs = Needs(
            capabilities=needs_caps,
            prompt_tokens=self.biller.prompt_estimate(call),
            output_tokens=out[0],
            explicit_output=out[1],
            # Only require_parameters looks at them: not worked out for other requests.
            parameters=request_parameters(call.body) - {"provider", "model", "messages"}
            if prefs.require_parameters
            else frozenset(),
        )
        groups = call.extras.get(GROUPS)
        if groups is None:
            best = rank([self.candidate(d, now) for d in deps], prefs, self.health, needs)
        else:  # model "auto": the router's order of models, each model's own ranked
            best = [
                c
                for _, ds in groups
                for c in rank([self.candidate(d, now) for d in ds], prefs, self.health, needs)
            ]
        if len(deps) == 1:  # most models: nothing to look up
            order = list(deps[: len(best)])
        else:
            by_id = {d.id: d for d in deps}
            order = [by_id[c.deployment_id] for c in best]
        if self.regions and latency_tolerant(call.body):
            order = self._by_power(order, call.extras.get(DEADLINE))
        if not order:
            what = ", ".join(sorted(needs_caps)) or call.endpoint
            raise InvalidRequest(
                f"No deployment of the model '{call.model}' can serve this request "
                f"(needs: {what}; the routing preferences and context window also apply).",
                param="model",
            )
        call.extras[RANKED] = tuple(order)
        return order

    def _by_power(self, order: list[Deployment], deadline: float | None) -> list[Deployment]:
        """Latency-tolerant work goes to the cheapest power that meets its deadline.

        Deployments without a configured region keep their order, after the placed ones.
        """
        placed: list[Placement] = []
        rest: list[Deployment] = []
        for d in order:
            region = self.regions.get(d.region or "")
            if region is None:
                rest.append(d)
                continue
            snap = self.health.snapshot(d.id)
            ttft = snap.ttft_s.at(50) if snap is not None and snap.ttft_s is not None else 0.0
            rtt = self._rtt.get(region.name, 0.0)
            placed.append(Placement(d.id, region, rtt, ttft))
        by_id = {d.id: d for d in order}
        return [by_id[p.deployment_id] for p in place(True, deadline, placed)] + rest

    def candidate(self, dep: Deployment, now: datetime) -> Candidate:
        """The deployment as routing sees it, with USD prices (refreshed each minute)."""
        hit = self._candidates.get(dep.id)
        ts = now.timestamp()
        if hit is not None and ts - hit[0] < 60:
            return hit[1]
        inp = out = None
        v = self.biller.version(dep, now)
        if v is not None:
            p = v.tiers[0].prices.resolved()
            rate = Fraction(1)
            if v.currency is not Currency.USD:
                rate = self.biller.rate(v.currency, Currency.USD, now)
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


def _usd(price: Decimal, rate: Fraction) -> Decimal:
    if rate == 1:
        return price
    return Decimal(price) * Decimal(rate.numerator) / Decimal(rate.denominator)
