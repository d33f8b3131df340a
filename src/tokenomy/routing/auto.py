"""``model: "auto"``: the learned router picks, per request, a model of the configured pool.

The pick and the next ``fallbacks`` models by the router's score make one route whose
deployments come model by model, in that order (each model's own deployments ranked as
usual by the preferences, health and price): the ledger's hold covers the dearest of
them, and a failing pick falls back to the next model. The quality bar comes from
``provider.min_quality`` or the ``X-Tokenomy-Min-Quality`` header (0–1), else the
pool's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenomy.core.call import Call, CallKey
from tokenomy.core.errors import InvalidRequest, PermissionDenied
from tokenomy.core.keys import ApiKey
from tokenomy.core.registry import Deployment, ModelRoute, Registry
from tokenomy.routing.learned import Decision, LearnedRouter, prompt_text

AUTO_MODELS = frozenset({"auto", "tokenomy/auto"})
#: The Decision for an auto call.
DECISION = CallKey[Decision]("routing.auto")
#: Recent auto requests whose prompt end is kept for feedback (about 8 MB at most).
RECENT_PROMPTS = 4096


def parse_bar(value: Any, what: str) -> float:
    """A quality bar from a request: a number from 0 to 1 (400 otherwise)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidRequest(f"{what} must be a number from 0 to 1.", param=what)
    return float(value)


class AutoRouter:
    def __init__(
        self,
        learned: LearnedRouter,
        pool: Mapping[str, str],
        registry: Registry,
        *,
        default_bar: float | None = None,
        fallbacks: int = 1,
    ) -> None:
        unknown = sorted(set(pool) - set(learned.models))
        if unknown:
            raise ValueError(f"router.pool names models the router does not know: {unknown}")
        self.learned = learned
        self.registry = registry
        self.default_bar = learned.default_bar if default_bar is None else default_bar
        self.fallbacks = fallbacks
        self.names = AUTO_MODELS
        self._recent: dict[str, str] = {}
        #: Router model -> served route (models not served here are left out).
        self.routes: dict[str, ModelRoute] = {}
        for rm, name in pool.items():
            route = registry.get(name)
            if route is not None:
                self.routes[rm] = route
        self._by_dep: dict[str, str] = {
            d.id: r.name for r in self.routes.values() for d in r.deployments
        }

    def bar(self, call: Call) -> float:
        prov = call.body.get("provider")
        if isinstance(prov, dict) and prov.get("min_quality") is not None:
            return parse_bar(prov["min_quality"], "provider.min_quality")
        bar = call.min_quality
        return self.default_bar if bar is None else bar

    def allowed(self, key: ApiKey, name: str) -> list[str]:
        """The pool models (router names) ``name`` may pick for ``key``: those the key may
        use, or all of them when the key may use ``name`` itself."""
        return [rm for rm, r in self.routes.items() if key.may_use(r.name) or key.may_use(name)]

    def listing(self, key: ApiKey, name: str = "auto") -> ModelRoute | None:
        """What ``GET /v1/models`` shows for ``name`` to ``key`` (None: the key may use
        no model of the pool, so auto is not offered)."""
        allowed = self.allowed(key, name)
        if not allowed:
            return None
        deps = tuple(d for rm in allowed for d in self.routes[rm].deployments)
        return ModelRoute(name, "picked per request by the learned router", deps)

    def route(self, call: Call) -> ModelRoute:
        """Decide for the call; the route of the pick and its fallbacks."""
        allowed = self.allowed(call.key, call.model)
        if not allowed:
            raise PermissionDenied(
                "This API key may use none of the models 'auto' picks from.", param="model"
            )
        text = prompt_text(call.body)
        decision = self.learned.decide(text, self.bar(call), allowed)
        self._remember(call.request_id, text)
        picked = decision.ranked[: 1 + self.fallbacks]
        groups = tuple(
            (self.routes[s.model].name, self.routes[s.model].deployments) for s in picked
        )
        call.put(DECISION, decision)
        call.route_groups = groups
        deps: tuple[Deployment, ...] = tuple(d for _, ds in groups for d in ds)
        return ModelRoute(call.model, "chosen by the learned router", deps)

    def _remember(self, request_id: str, text: str) -> None:
        recent = self._recent
        recent[request_id] = text
        if len(recent) > RECENT_PROMPTS:
            del recent[next(iter(recent))]  # the oldest (dicts keep insertion order)

    def recent_prompt(self, request_id: str) -> str | None:
        """The prompt's end as the router read it, for a recent auto request of this
        process (feedback on it becomes a training row)."""
        return self._recent.get(request_id)

    def model_of(self, dep: Deployment) -> str | None:
        return self._by_dep.get(dep.id)

    def serving(self, call: Call, dep: Deployment) -> None:
        """An attempt starts on ``dep``: an auto call takes its model's name (the usage
        record, a translated answer and the response header name what served it)."""
        if DECISION in call.state:
            call.model = self._by_dep.get(dep.id, call.model)
            call.served_as = call.model

    def annotate(self, call: Call, headers: dict[str, str]) -> None:
        """``x-tokenomy-router`` on an auto call's response: the pick, its predicted
        quality, the bar and the models considered (and what served, after a fallback)."""
        decision = call.get(DECISION)
        if decision is None:
            return
        names = {rm: r.name for rm, r in self.routes.items()}
        text = decision.header(names)
        if call.model != names.get(decision.chosen.model):
            text += f"; served={call.model}"
        headers["x-tokenomy-router"] = text
