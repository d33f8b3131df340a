"""Which deployments may serve a request, and in what order: OpenRouter's ``provider`` object.

``parse_preferences`` validates the request's ``provider`` object and model suffix
(``:floor``, ``:nitro``) against a default policy from config; ``rank`` applies hard
filters (capabilities, context window, output length, parameters, ``only``/``ignore``,
``max_price``) and then orders what is left: explicit ``order`` first, then by the chosen
sort, with soft preferences (latency, throughput) and resting deployments moved down.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, Protocol, cast

from tokenomy.core.errors import InvalidRequest
from tokenomy.routing.health import PERCENTILES, HealthSnapshot, Percentiles

Sort = Literal["price", "latency", "throughput"]
SORTS: tuple[Sort, ...] = ("price", "latency", "throughput")
SUFFIX_SORTS: Mapping[str, Sort] = {":floor": "price", ":nitro": "throughput"}

#: Request parameters every chat deployment is assumed to accept.
BASE_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "input",
        "system",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stop_sequences",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "provider",
    }
)
#: Parameters that a capability implies a deployment accepts.
CAPABILITY_PARAMETERS: Mapping[str, frozenset[str]] = {
    "tools": frozenset({"tools", "tool_choice", "parallel_tool_calls", "functions"}),
    "json": frozenset({"response_format"}),
    "reasoning": frozenset({"reasoning", "reasoning_effort", "thinking"}),
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment as routing sees it; prices are USD per million tokens, None if unpriced."""

    deployment_id: str
    vendor: str
    input_usd_per_m: Decimal | None
    output_usd_per_m: Decimal | None
    capabilities: frozenset[str]
    context_length: int | None = None
    region: str | None = None
    weight: int = 1
    max_output: int | None = None
    #: Parameters the deployment accepts; None: BASE_PARAMETERS plus its capabilities'.
    parameters: frozenset[str] | None = None

    def accepts(self, param: str) -> bool:
        if self.parameters is not None:
            return param in self.parameters or param in BASE_PARAMETERS
        if param in BASE_PARAMETERS:
            return True
        return any(param in CAPABILITY_PARAMETERS.get(c, ()) for c in self.capabilities)


@dataclass(frozen=True, slots=True)
class Needs:
    """What the request uses: a deployment lacking any of it is never chosen."""

    capabilities: frozenset[str] = frozenset()
    prompt_tokens: int = 0
    #: Output tokens the request may produce (its max_tokens, or the default cap).
    output_tokens: int = 0
    #: True when the client set max_tokens itself: the deployment must allow that much.
    explicit_output: bool = False
    parameters: frozenset[str] = frozenset()

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Preferences:
    """A parsed ``provider`` object. Slugs match a vendor key or a deployment id."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: Sort | None = None
    max_price_prompt: Decimal | None = None
    max_price_completion: Decimal | None = None
    #: Cutoffs in seconds (time to first token) by percentile.
    preferred_max_latency: Mapping[int, float] = field(default_factory=dict)
    #: Cutoffs in output tokens per second by percentile.
    preferred_min_throughput: Mapping[int, float] = field(default_factory=dict)
    require_parameters: bool = False


class HealthView(Protocol):
    def snapshot(self, deployment_id: str) -> HealthSnapshot | None: ...


class NoHealth:
    """A HealthView with nothing measured yet."""

    def snapshot(self, deployment_id: str) -> HealthSnapshot | None:
        return None


def split_model_suffix(model: str) -> tuple[str, Sort | None]:
    """``"glm-5:floor"`` → ``("glm-5", "price")``; other colons are part of the name."""
    for suffix, sort in SUFFIX_SORTS.items():
        if model.endswith(suffix) and len(model) > len(suffix):
            return model[: -len(suffix)], sort
    return model, None


def parse_preferences(
    provider: Any, model: str, default: Preferences | None = None
) -> tuple[str, Preferences]:
    """The model name without its routing suffix, and the preferences for this request.

    Fields the request sets replace the default policy's; ``ignore`` lists are merged (an
    operator's exclusions hold). An explicit ``sort`` wins over a model suffix.
    Raises InvalidRequest naming the offending field.
    """
    base, suffix_sort = split_model_suffix(model)
    prefs = default or Preferences()
    if suffix_sort is not None:
        prefs = replace(prefs, sort=suffix_sort)
    if provider is None:
        return base, prefs
    if not isinstance(provider, dict):
        raise InvalidRequest("'provider' must be an object.", param="provider")
    changes: dict[str, Any] = {}
    for key, value in provider.items():
        parser = _FIELDS.get(key)
        if parser is None:
            if key in _IGNORED:
                continue
            raise InvalidRequest(f"Unknown field 'provider.{key}'.", param=f"provider.{key}")
        if value is None:
            continue
        changes.update(parser(value, f"provider.{key}"))
    if "ignore" in changes:
        changes["ignore"] = changes["ignore"] | prefs.ignore
    return base, replace(prefs, **changes)


def _slugs(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise InvalidRequest(f"'{param}' must be a list of provider names.", param=param)
    return tuple(s.lower() for s in value)


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be true or false.", param=param)
    return value


def _number(value: Any, param: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"'{param}' must be a non-negative number.", param=param)
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise InvalidRequest(f"'{param}' must be a non-negative number.", param=param) from None
    if not d.is_finite() or d < 0:
        raise InvalidRequest(f"'{param}' must be a non-negative number.", param=param)
    return d


def _sort(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, dict):
        unknown = set(value) - {"by", "partition"}
        if unknown:
            raise InvalidRequest(f"Unknown field '{param}.{min(unknown)}'.", param=param)
        value = value.get("by")
        if value is None:
            return {}
    if value not in SORTS:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(SORTS)}.", param=param)
    return {"sort": cast(Sort, value)}


def _max_price(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "prompt":
            out["max_price_prompt"] = _number(v, f"{param}.prompt")
        elif k == "completion":
            out["max_price_completion"] = _number(v, f"{param}.completion")
        elif k in ("request", "image", "audio"):
            _number(v, f"{param}.{k}")  # valid but not billed here: nothing to filter
        else:
            raise InvalidRequest(f"Unknown field '{param}.{k}'.", param=f"{param}.{k}")
    return out


def _cutoffs(value: Any, param: str) -> dict[int, float]:
    """A number (a p50 cutoff) or ``{"p50": .., "p75": .., "p90": .., "p99": ..}``."""
    if isinstance(value, dict):
        out: dict[int, float] = {}
        for k, v in value.items():
            p = int(k[1:]) if isinstance(k, str) and k[1:].isdigit() and k[0] == "p" else None
            if p not in PERCENTILES:
                raise InvalidRequest(
                    f"'{param}' takes p50, p75, p90 and p99, not '{k}'.", param=f"{param}.{k}"
                )
            if v is not None:
                out[p] = float(_number(v, f"{param}.{k}"))
        return out
    return {50: float(_number(value, param))}


# min_quality is model "auto"'s (tokenomy.routing.auto reads and checks it).
_IGNORED = frozenset(
    {"data_collection", "zdr", "enforce_distillable_text", "quantizations", "min_quality"}
)
_FIELDS: Mapping[str, Any] = {
    "order": lambda v, p: {"order": _slugs(v, p)},
    "only": lambda v, p: {"only": frozenset(_slugs(v, p))},
    "ignore": lambda v, p: {"ignore": frozenset(_slugs(v, p))},
    "allow_fallbacks": lambda v, p: {"allow_fallbacks": _bool(v, p)},
    "require_parameters": lambda v, p: {"require_parameters": _bool(v, p)},
    "sort": _sort,
    "max_price": _max_price,
    "preferred_max_latency": lambda v, p: {"preferred_max_latency": _cutoffs(v, p)},
    "preferred_min_throughput": lambda v, p: {"preferred_min_throughput": _cutoffs(v, p)},
}


def _matches(c: Candidate, slugs: frozenset[str] | tuple[str, ...]) -> bool:
    return c.vendor.lower() in slugs or c.deployment_id.lower() in slugs


def eligible(c: Candidate, prefs: Preferences, needs: Needs) -> bool:
    """The hard filters: a False here means this deployment must not serve the request."""
    if not needs.capabilities <= c.capabilities:
        return False
    if c.context_length is not None and needs.context_tokens > c.context_length:
        return False
    if needs.explicit_output and c.max_output is not None and needs.output_tokens > c.max_output:
        return False
    if prefs.only is not None and not _matches(c, prefs.only):
        return False
    if prefs.ignore and _matches(c, prefs.ignore):
        return False
    if prefs.max_price_prompt is not None and (
        c.input_usd_per_m is None or c.input_usd_per_m > prefs.max_price_prompt
    ):
        return False
    if prefs.max_price_completion is not None and (
        c.output_usd_per_m is None or c.output_usd_per_m > prefs.max_price_completion
    ):
        return False
    return not prefs.require_parameters or all(c.accepts(p) for p in needs.parameters)


def exclusion(c: Candidate, prefs: Preferences, needs: Needs) -> str | None:
    """Why a hard filter rules ``c`` out, in a word ("only", "ignore", "max_price",
    "needs"), or None when none does: a routing decision's header says it."""
    if prefs.only is not None and not _matches(c, prefs.only):
        return "only"
    if prefs.ignore and _matches(c, prefs.ignore):
        return "ignore"
    if (
        prefs.max_price_prompt is not None
        and (c.input_usd_per_m is None or c.input_usd_per_m > prefs.max_price_prompt)
    ) or (
        prefs.max_price_completion is not None
        and (c.output_usd_per_m is None or c.output_usd_per_m > prefs.max_price_completion)
    ):
        return "max_price"
    return None if eligible(c, prefs, needs) else "needs"


def estimated_cost(c: Candidate, needs: Needs) -> Decimal | None:
    """USD per million requests of this shape (prompt and output tokens), or None."""
    if c.input_usd_per_m is None or c.output_usd_per_m is None:
        return None
    if needs.prompt_tokens or needs.output_tokens:
        return c.input_usd_per_m * needs.prompt_tokens + c.output_usd_per_m * needs.output_tokens
    return c.input_usd_per_m + c.output_usd_per_m


def _misses(cutoffs: Mapping[int, float], measured: Percentiles | None, above: bool) -> bool:
    """Does a measured deployment miss a soft cutoff? Unmeasured ones are given the benefit."""
    if not cutoffs or measured is None:
        return False
    if above:
        return any(measured.at(p) > limit for p, limit in cutoffs.items())
    return any(measured.at(p) < limit for p, limit in cutoffs.items())


_INF = float("inf")


def rank(
    candidates: Sequence[Candidate],
    prefs: Preferences,
    health: HealthView,
    needs: Needs,
    rng: random.Random | None = None,
) -> list[Candidate]:
    """The deployments to try, best first; empty when none may serve the request.

    Explicit ``order`` comes first, in its order. The rest follow, grouped so that
    resting (breaker open) deployments come last and those missing a soft latency or
    throughput preference come after those meeting it, then sorted by ``prefs.sort``;
    with no sort, by price for this request's token mix, equal prices shared by weight
    (weighted random when ``rng`` is given, else heaviest first). Without fallbacks, the
    list is the ordered providers (or, with no order, the single best).
    """
    ok = [c for c in candidates if eligible(c, prefs, needs)]
    if len(ok) < 2:
        return ok  # nothing to order: the common case of a model with one deployment
    snaps = {c.deployment_id: health.snapshot(c.deployment_id) for c in ok}
    ordered: list[Candidate] = []
    taken: set[str] = set()
    for slug in prefs.order:
        for c in ok:
            if c.deployment_id not in taken and _matches(c, (slug,)):
                ordered.append(c)
                taken.add(c.deployment_id)
    if ordered and not prefs.allow_fallbacks:
        return ordered
    rest = [c for c in ok if c.deployment_id not in taken]
    tiebreak = _tiebreak(rest, rng if prefs.sort is None else None)

    def key(c: Candidate) -> tuple[Any, ...]:
        s = snaps[c.deployment_id]
        resting = s is not None and s.resting
        soft = _misses(prefs.preferred_max_latency, s.ttft_s if s else None, True) or _misses(
            prefs.preferred_min_throughput, s.throughput if s else None, False
        )
        return (resting, soft, _sort_value(c, prefs.sort, s, needs), tiebreak[c.deployment_id])

    rest.sort(key=key)
    result = ordered + rest
    return result if prefs.allow_fallbacks else result[:1]


def _sort_value(
    c: Candidate, sort: Sort | None, s: HealthSnapshot | None, needs: Needs
) -> tuple[int, Any]:
    """(unknown?, value): deployments without the measure sort after those with it."""
    if sort == "latency":
        return (0, s.ttft_s.p50) if s and s.ttft_s else (1, _INF)
    if sort == "throughput":
        return (0, -s.throughput.p50) if s and s.throughput else (1, _INF)
    cost = estimated_cost(c, needs)
    return (0, cost) if cost is not None else (1, Decimal(0))


def _tiebreak(cands: Sequence[Candidate], rng: random.Random | None) -> dict[str, float]:
    """Smaller first: weighted random keys (Efraimidis–Spirakis) or heaviest first."""
    if rng is None:
        return {c.deployment_id: -float(c.weight) for c in cands}
    return {c.deployment_id: -(rng.random() ** (1.0 / max(c.weight, 1))) for c in cands}


def request_parameters(body: Mapping[str, Any]) -> frozenset[str]:
    """The top-level parameters a request body uses (for ``require_parameters``)."""
    return frozenset(k for k, v in body.items() if v is not None)
