"""What a call may cost (for the hold) and what it did cost (for settlement).

Prices come from the catalogue entry each deployment is billed at, in effect at the
instant the request arrived. A cost in the price's currency is converted to the org's
currency with the dated FX table as one exact fraction, then rounded half-up to nanos
once; worst cases round up, so a hold always covers the cost it bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import orjson

from tokenomy.billing.catalog import PriceBook, PriceNotFound, PriceVersion
from tokenomy.billing.fx import FxTable
from tokenomy.billing.money import Currency, round_half_up_div, round_half_up_fraction
from tokenomy.billing.pricing import exact_cost_nanos, worst_case_nanos
from tokenomy.core.call import IMAGE_PARTS, Call
from tokenomy.core.registry import Deployment
from tokenomy.core.usage import Usage

log = logging.getLogger(__name__)

#: Framing tokens allowed per message and per request when bounding a prompt.
_PER_MESSAGE = 8
_PER_REQUEST = 16
#: Bytes of prompt per token in the usual estimate (English text and JSON run 3.5-4.5).
BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class Charge:
    """The money side of one call, as kept on its usage record."""

    cost_nanos: int = 0  # charged to the org, in ``currency``
    currency: Currency | None = None
    list_cost_nanos: int = 0  # in the price's own currency
    list_currency: Currency | None = None
    price_version: str | None = None
    fx_rate: Fraction | None = None
    held_nanos: int = 0
    #: Cost above the hold (charged all the same; the hold bounded it wrongly).
    overrun_nanos: int = 0
    #: The price tier billed: "batch" (the catalogue's batch price) or "standard".
    tier: str | None = None

    def cost_str(self) -> str:
        """The charged cost in units as a plain decimal string (for headers and bodies)."""
        return units(self.cost_nanos)


BATCH_TIER = "batch"
STANDARD_TIER = "standard"


def _utf8_len(text: str) -> int:
    """``len(text.encode())`` without making the copy when the text is ASCII (a flag
    Python keeps): a 400 KB prompt cost a 400 KB copy per request for its length."""
    return len(text) if text.isascii() else len(text.encode())


def wants_batch(call: Call) -> bool:
    """Did the client ask for the batch tier (``service_tier: "batch"``)?"""
    return call.body.get("service_tier") == BATCH_TIER


def batch_priced(version: PriceVersion, batch: bool) -> bool:
    """Is a call asking for batch billed at ``version``'s batch price? (Only if it has one:
    a deployment without a batch offer bills the standard price.)"""
    return batch and version.batch_multiplier is not None


def units(nanos: int) -> str:
    """Nanos as a plain decimal string of units: 1500000 -> \"0.0015\"."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), 10**9)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return sign + text


class CallPricer:
    def __init__(self, prices: PriceBook, fx: FxTable, *, image_tokens: int = 6000) -> None:
        self.prices = prices
        self.fx = fx
        self.image_tokens = image_tokens
        self._versions: dict[tuple[str, str], PriceVersion | None] = {}

    def version(self, dep: Deployment, at: datetime) -> PriceVersion | None:
        """The price version ``dep`` is billed at, at ``at``; None when not catalogued."""
        if dep.price_ref in self._versions:
            cached = self._versions[dep.price_ref]
            if cached is None or cached.covers(at):
                return cached
        try:
            v: PriceVersion | None = self.prices.lookup(*dep.price_ref, at)
        except PriceNotFound:
            log.warning(
                "no price for %s (%s): its usage is recorded at zero cost",
                dep.id,
                "/".join(dep.price_ref),
            )
            v = None
        self._versions[dep.price_ref] = v
        return v

    def rate(self, base: Currency, quote: Currency, at: datetime) -> Fraction:
        return self.fx.rate(base, quote, at.date())

    # ---- holds ------------------------------------------------------------------------

    def prompt_bound(self, call: Call) -> int:
        """An upper bound of the prompt's tokens without tokenizing.

        A byte-level BPE token covers at least one byte of text, so UTF-8 length bounds
        text; images count ``image_tokens`` each; everything else counts its JSON length.
        """
        cached = call.prompt_bound
        if cached is not None:
            return cached
        bound = self._prompt_bound(call)
        # Routing, rate limits and the hold all ask: walk the prompt once per call.
        call.prompt_bound = bound
        return bound

    def prompt_estimate(self, call: Call) -> int:
        """The prompt's likely token count (a quarter of its bound), for routing and rate
        limits: the bound is the right figure for a hold, far too high for these."""
        return self.prompt_bound(call) // BYTES_PER_TOKEN

    def _prompt_bound(self, call: Call) -> int:
        b = call.body
        total = _PER_REQUEST
        if call.endpoint in ("chat", "messages", "responses"):
            for m in b.get("messages") or ():
                total += _PER_MESSAGE + (self._content_bound(m) if isinstance(m, dict) else 0)
            total += self._content_bound({"content": b.get("system")})
            for k in ("tools", "functions", "response_format"):
                if b.get(k):
                    total += len(orjson.dumps(b[k]))
            return total
        inp = b.get("prompt") if call.endpoint == "completions" else b.get("input")
        items = inp if isinstance(inp, list) else [inp]
        for x in items:
            if isinstance(x, str):
                total += _utf8_len(x)
            elif isinstance(x, list):
                total += len(x)  # token ids
        return total

    def _content_bound(self, m: dict[str, Any]) -> int:
        c = m.get("content")
        n = 0
        if isinstance(c, str):
            n = _utf8_len(c)
        elif isinstance(c, list):
            for part in c:
                if not isinstance(part, dict):
                    n += len(orjson.dumps(part))
                elif isinstance(part.get("text"), str):
                    n += _utf8_len(part["text"])
                elif part.get("type") in IMAGE_PARTS:
                    n += self.image_tokens
                else:
                    n += len(orjson.dumps(part))
        elif c is not None:
            n = len(orjson.dumps(c))
        for k in ("tool_calls", "function_call", "name"):
            if m.get(k):
                n += len(orjson.dumps(m[k]))
        return n

    def any_free(self, deps: Iterable[Deployment], at: datetime) -> bool:
        """Whether any of ``deps`` may cost nothing at ``at``: no catalogued price (its
        usage is recorded at zero cost), or one whose every rate is zero."""
        for dep in deps:
            v = self.version(dep, at)
            if v is None or worst_case_nanos(v, 1, 1, at=at) == 0:
                return True
        return False

    def max_output(self, call: Call, dep: Deployment, default: int) -> int:
        if call.endpoint == "embeddings":
            return 0
        cap = call.requested_max_output()
        limit = dep.max_output
        if cap is not None:
            return min(cap, limit) if limit else cap
        return limit or default

    def worst(
        self,
        call: Call,
        deps: list[Deployment],
        currency: Currency,
        prompt_tokens: int,
        default_max_output: int,
        at: datetime,
    ) -> tuple[int, int]:
        """(nanos in ``currency``, tokens): the most any candidate could charge, every
        choice (``n``, ``best_of``) producing its whole output cap."""
        top_nanos = top_tokens = 0
        batch = wants_batch(call)
        choices = call.choices()
        for dep in deps:
            out = self.max_output(call, dep, default_max_output) * choices
            top_tokens = max(top_tokens, prompt_tokens + out)
            v = self.version(dep, at)
            if v is None:
                continue
            nanos = worst_case_nanos(v, prompt_tokens, out, at=at, batch=batch_priced(v, batch))
            if v.currency is not currency:
                x = Fraction(nanos) * self.rate(v.currency, currency, at)
                nanos = -((-x.numerator) // x.denominator)  # ceiling
            top_nanos = max(top_nanos, nanos)
        return top_nanos, top_tokens

    # ---- settlement -------------------------------------------------------------------

    def charge(self, call: Call, currency: Currency | None, held: int | None) -> Charge:
        """Price the call's usage. Never capped at ``held``: the vendor bills what it
        produced, so a cost above the hold is charged in full and noted as an overrun."""
        ch = Charge(currency=currency, held_nanos=held or 0)
        dep, usage = call.deployment, call.usage or Usage()
        at = datetime.fromtimestamp(call.ts_ms / 1000, UTC)
        if dep is None:
            return ch
        v = self.version(dep, at)
        if v is None:
            return ch
        ch.price_version = v.id
        ch.list_currency = v.currency
        batch = batch_priced(v, wants_batch(call))
        ch.tier = BATCH_TIER if batch else STANDARD_TIER
        if not (usage.input_tokens or usage.output_tokens):
            if ch.currency is None:
                ch.currency = v.currency
            return ch
        num, denom = exact_cost_nanos(v, usage, at=at, batch=batch)
        list_nanos = round_half_up_div(num, denom)
        ch.list_cost_nanos = list_nanos
        target = currency or v.currency
        ch.currency = target
        if target is v.currency:
            nanos = list_nanos
        else:
            ch.fx_rate = self.rate(v.currency, target, at)
            # One rounding: the exact cost times the exact rate, to nanos.
            nanos = round_half_up_fraction(Fraction(num, denom) * ch.fx_rate)
        if held is not None and nanos > held:
            ch.overrun_nanos = nanos - held
            log.info(
                "request %s cost %s nanos, %s above its hold", call.request_id, nanos, nanos - held
            )
        ch.cost_nanos = nanos
        return ch
