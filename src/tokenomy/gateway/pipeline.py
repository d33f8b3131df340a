"""The request pipeline: authorize → admit → route → reserve → call → meter → settle → record.

The HTTP layer authenticates and parses; this module does the rest with no database
round-trip: stages (admission, ledger holds) run before the vendor call and settle after,
the provider is called with fallbacks, usage is metered, and one usage record is queued
for the batched writer, exactly once per call, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from tokenomy.admission.fairqueue import QueueBoard, Slot, tier_for
from tokenomy.billing.call_pricing import Charge
from tokenomy.config import ServerConfig
from tokenomy.core.call import CHAT_BODIES, Call, Stage
from tokenomy.core.errors import (
    GatewayError,
    Overloaded,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from tokenomy.core.metering import (
    anthropic_response_text,
    count_prompt,
    counted_usage,
    openai_response_text,
)
from tokenomy.core.registry import Deployment, Registry
from tokenomy.core.tokencount import TokenCounter
from tokenomy.core.usage import Usage, UsageSource
from tokenomy.gateway.candidates import Candidates
from tokenomy.gateway.relay import StreamRelay
from tokenomy.gateway.responses_native import ResponsesRelay, meter_answer, passes_through
from tokenomy.gateway.traffic import Traffic
from tokenomy.ledger.stage import LEDGER
from tokenomy.providers.base import Provider
from tokenomy.providers.translate_request import (
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)
from tokenomy.providers.translate_response import (
    anthropic_response_to_openai,
    anthropic_usage,
    openai_response_to_anthropic,
)
from tokenomy.routing.auto import AutoRouter
from tokenomy.routing.router import Router
from tokenomy.tracing import child_span

log = logging.getLogger(__name__)

#: Errors after which the next deployment is tried (nothing has reached the client yet).
RETRYABLE = (RateLimited, UpstreamError, UpstreamTimeout)


class Quoter(Protocol):
    """Prices a call from its usage, for the cost a response carries."""

    def quote(self, call: Call) -> Charge: ...


@dataclass(slots=True)
class Outcome:
    headers: dict[str, str]
    body: bytes | None = None
    relay: StreamRelay | None = None
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """The request path after the HTTP edge, built whole by ``services.build_services``.

    Two pieces may be switched off, and are ``None`` then: ``auto`` (model "auto", when
    the config has a router pool) and ``tracer`` (when no traces are exported). Each is
    looked at once per call, not per step.
    """

    def __init__(
        self,
        registry: Registry,
        providers: Mapping[str, Provider],
        counter: TokenCounter,
        record: Callable[[Call], None],
        server: ServerConfig,
        *,
        stages: Sequence[Stage],
        candidates: Candidates,
        router: Router,
        queues: QueueBoard,
        quoter: Quoter,
        auto: AutoRouter | None = None,
        tracer: Any | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.counter = counter
        self._record = record
        self.server = server
        #: Steps around the vendor call (rate limits, the ledger's hold), in order.
        self.stages = list(stages)
        #: The deployments that may serve a call, best first.
        self.candidates = candidates
        #: Ranks deployments by preferences, price and health; keeps their health.
        self.router = router
        #: Fair queues for deployments with a concurrency cap.
        self.queues = queues
        #: Gives responses their cost (``usage.cost``, a header): the ledger stage.
        self.quoter = quoter
        #: Serves ``model: "auto"`` when the config has a router pool.
        self.auto = auto
        #: An OpenTelemetry tracer when traces are exported (see tokenomy.tracing).
        self.tracer = tracer
        #: Interactive calls in flight, counted by the HTTP edge (batch work yields to them).
        self.traffic = Traffic()

    def route(self, call: Call) -> None:
        """Resolve the model and check the key may use it (raises 404/403)."""
        name = self.router.prepare(call)
        auto = self.auto
        if auto is not None and name in auto.names:
            call.route = auto.route(call)  # only models the key may use
            return
        call.route = self.registry.resolve(name)
        if not call.key.may_use(call.model) and not call.key.may_use(call.route.name):
            raise PermissionDenied(
                f"This API key is not allowed to use the model '{call.model}'.", param="model"
            )

    async def open(self, call: Call) -> Outcome:
        """Run the stages and call the vendor, falling back across deployments.

        Returns once the client's response can start: the whole body, or a relay whose
        stream has been accepted upstream.
        """
        if call.route is None:
            self.route(call)
        # Spans only when traced: otherwise not even their names and attributes are made.
        span = call.span if self.tracer is not None else None
        passed: list[Stage] = []
        call.stages_passed = passed
        for stage in self.stages:
            if span is None:
                await stage.before(call)
            else:
                with child_span(self.tracer, span, _span_name(stage)):
                    await stage.before(call)
            passed.append(stage)
        # Model "auto" names what served (set by its route): its own bookkeeping per attempt.
        auto = self.auto if call.route_groups is not None else None
        health = self.router.health
        last: GatewayError | None = None
        for dep in self.candidates(call):
            if not health.allow(dep.id):
                continue  # resting after failures; the breaker lets a probe through later
            if call.attempts:
                # Back off a little between fallbacks, more with each one.
                await asyncio.sleep(min(0.025 * 2 ** (call.attempts - 1), 0.4))
            provider = self.providers[dep.vendor.key]
            try:
                slot = await self._slot(call, dep) if dep.max_concurrent is not None else None
            except Overloaded as e:
                last = e
                continue
            call.attempts += 1
            call.deployment = dep
            if auto is not None:
                auto.serving(call, dep)
            try:
                if span is None:
                    outcome = await self._attempt(call, dep, provider)
                else:
                    with child_span(
                        self.tracer,
                        span,
                        "tokenomy.upstream",
                        **{"tokenomy.deployment": dep.id, "tokenomy.attempt": call.attempts},
                    ):
                        outcome = await self._attempt(call, dep, provider)
            except Overloaded as e:
                # The gateway's own limit (a full connection pool): the next deployment
                # may have room, and this one's health is untouched.
                if slot is not None:
                    slot.release()
                last = e
                continue
            except RETRYABLE as e:
                if slot is not None:
                    slot.release()
                self.router.failed(dep)
                log.info("request %s: %s failed (%s); trying the next", call.request_id, dep.id, e)
                last = e
                continue
            except BaseException:
                if slot is not None:
                    slot.release()
                raise
            if slot is not None:
                call.queue_slot = slot
                outcome.headers.update(slot.headers())
            if call.ratelimit_headers:
                outcome.headers.update(call.ratelimit_headers)
            if auto is not None:
                auto.annotate(call, outcome.headers)
            return outcome
        call.deployment = None
        if last is None:
            raise Overloaded(
                f"Every deployment of '{call.model}' is resting after failures; retry shortly.",
                retry_after=5,
            )
        raise last

    async def _slot(self, call: Call, dep: Deployment) -> Slot | None:
        """A place in the deployment's fair queue, when it caps concurrency."""
        if dep.max_concurrent is None:
            return None
        q = self.queues.queue(dep.id, dep.max_concurrent)
        return await q.acquire(
            call.key.org_id or call.key.id,
            key=call.key.id,
            tier=tier_for(call.body.get("service_tier")),
            max_wait_s=call.max_wait_s,
            request_id=call.request_id,
        )

    async def _attempt(self, call: Call, dep: Deployment, provider: Provider) -> Outcome:
        if call.native is not None and passes_through(call, dep):
            return await self._native(call, dep, provider)
        endpoint, body = self._upstream_request(call, provider.dialect)
        resp = await provider.send(dep, endpoint, body, stream=call.stream)
        headers = {"x-request-id": call.request_id, "x-tokenomy-deployment": dep.id}
        placed = call.placement
        if placed is not None and dep.id in placed:  # latency-tolerant: what it costs here
            headers["x-tokenomy-placement"] = placed[dep.id]
        if call.affinity is not None:  # hit, miss, expired or yielded:<why>
            headers["x-tokenomy-affinity"] = call.affinity.header(dep.id)
        if call.stream:
            relay = StreamRelay(
                call,
                resp,
                provider.dialect,
                prompt_tokens_hint=lambda: count_prompt(self.counter, call),
                count_usage=lambda: counted_usage(self.counter, call),
            )
            quoter = self.quoter
            relay.cost = lambda c: quoter.quote(c).cost_str()
            return Outcome(headers=headers, relay=relay)
        raw = await resp.read()
        call.mark_first_token()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{dep.vendor.name} answered with invalid JSON.") from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"{dep.vendor.name} answered with an unexpected body.")
        out = self._client_obj(call, provider.dialect, obj)
        renamed = out is obj and obj.get("model") != call.public_model
        if renamed:
            obj["model"] = call.public_model
        cost = None
        if call.usage is not None:
            cost = self.quoter.quote(call).cost_str()
            headers["x-tokenomy-cost"] = cost
        usage = out.get("usage")
        if cost is not None and isinstance(usage, dict):
            usage["cost"] = orjson.Fragment(cost.encode())  # OpenRouter's field, exact
            body_out = orjson.dumps(out)
        elif (
            out is obj
            and not renamed
            and call.usage is not None
            and call.usage.source is UsageSource.UPSTREAM
        ):
            body_out = raw  # an untranslated answer goes out byte for byte
        else:
            body_out = orjson.dumps(out)
        return Outcome(headers=headers, body=body_out)

    def upstream_request(self, call: Call, dialect: str) -> tuple[str, dict[str, Any]]:
        """(endpoint, body) of the call as a vendor of ``dialect`` takes it (translated,
        our own fields removed), before the deployment's model is put in."""
        return self._upstream_request(call, dialect)

    async def _native(self, call: Call, dep: Deployment, provider: Provider) -> Outcome:
        """A Responses call sent as it is to a vendor that speaks the Responses API."""
        assert call.native is not None
        resp = await provider.send(dep, "responses", call.native, stream=call.stream)
        headers = {"x-request-id": call.request_id, "x-tokenomy-deployment": dep.id}
        quoter = self.quoter
        cost = None if quoter is None else (lambda c: str(quoter.quote(c).cost_str()))
        if call.stream:
            relay = ResponsesRelay(
                call,
                resp,
                prompt_tokens_hint=lambda: count_prompt(self.counter, call),
                count_usage=lambda: counted_usage(self.counter, call),
            )
            relay.cost = cost
            return Outcome(headers=headers, relay=relay)
        raw = await resp.read()
        call.mark_first_token()
        count = lambda: counted_usage(self.counter, call)  # noqa: E731
        body, price = meter_answer(call, raw, dep.vendor.name, count, cost)
        if price is not None:
            headers["x-tokenomy-cost"] = price
        return Outcome(headers=headers, body=body)

    def _upstream_request(self, call: Call, dialect: str) -> tuple[str, dict[str, Any]]:
        body = call.body
        if "provider" in body or body.get("service_tier") == "batch":
            # Routing preferences and the batch tier are ours: OpenAI's API knows no
            # "batch" service tier and Anthropic's rejects it.
            body = {
                k: v
                for k, v in body.items()
                if k != "provider" and not (k == "service_tier" and v == "batch")
            }
        if call.endpoint in CHAT_BODIES and dialect == "anthropic":
            cap = call.max_output_tokens(self.server.default_max_output_tokens)
            return "messages", openai_request_to_anthropic(body, default_max_tokens=cap)
        if call.endpoint == "messages" and dialect == "openai":
            return "chat", anthropic_request_to_openai(body)
        return ("chat" if call.endpoint == "responses" else call.endpoint), body

    def meter_answer(self, call: Call, dialect: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Meter a whole answer that came another way (a vendor's batch output file) as
        if the call had fetched it; the answer in the client's dialect, its model named
        as the client named it."""
        out = self._client_obj(call, dialect, obj)
        if out is obj:
            obj["model"] = call.public_model
        return out

    def _client_obj(self, call: Call, dialect: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Meter a whole answer; the answer in the client's dialect (``obj`` itself when
        the dialects match)."""
        u = obj.get("usage")
        if dialect == "openai":
            if isinstance(u, dict):
                call.usage = Usage.from_openai(u)
            else:
                # A silent vendor: the answer goes out with our count, as it is billed.
                call.output_text.append(openai_response_text(obj))
                call.usage = counted_usage(self.counter, call)
                obj["usage"] = _openai_usage(call)
            if call.dialect == "openai":
                return obj
            return openai_response_to_anthropic(obj, model=call.public_model)
        if isinstance(u, dict):
            call.usage = Usage.from_anthropic(u)
        else:
            call.output_text.append(anthropic_response_text(obj))
            call.usage = counted_usage(self.counter, call)
            obj["usage"] = anthropic_usage(call.usage)
        if call.dialect == "anthropic":
            return obj
        return anthropic_response_to_openai(obj, model=call.public_model)

    def fail(self, call: Call, err: GatewayError) -> None:
        call.status = "error"
        call.http_status = err.status
        call.error_code = err.code or err.type

    async def finish(self, call: Call, relay: StreamRelay | None = None) -> None:
        """Meter, settle and record the call: safe to call many times, acts once."""
        if call.finished:
            return
        call.finished = True
        if call.usage is None:
            produced = call.deployment is not None and (call.output_text or relay is not None)
            call.usage = counted_usage(self.counter, call) if produced else Usage()
        slot = call.queue_slot
        if slot is not None:
            call.queue_slot = None
            slot.release()
        if call.status == "ok" and call.deployment is not None:
            self.router.succeeded(call)
        parent = call.span if self.tracer is not None else None
        if parent is None:
            await self._after(call)
        else:
            with child_span(self.tracer, parent, "tokenomy.settle"):
                await self._after(call)
        call.output_text.clear()
        self._record(call)
        span = call.span
        if span is not None:
            call.span = None
            _end_request_span(span, call)

    async def _after(self, call: Call) -> None:
        """Every passed stage's ``after``, last first; one failing does not stop the rest."""
        for stage in reversed(call.stages_passed or ()):
            try:
                await stage.after(call)
            except Exception:
                log.exception("request %s: settling %s failed", call.request_id, stage)


def _openai_usage(call: Call) -> dict[str, Any]:
    """The call's usage as the OpenAI answer to its endpoint carries it."""
    assert call.usage is not None
    if call.endpoint == "embeddings":
        n = call.usage.input_tokens
        return {"prompt_tokens": n, "total_tokens": n}
    return call.usage.to_openai()


def _span_name(stage: object) -> str:
    return str(getattr(stage, "span_name", f"tokenomy.{type(stage).__name__}"))


def _end_request_span(span: Any, call: Call) -> None:
    u = call.usage
    attrs: dict[str, Any] = {
        "tokenomy.status": call.status,
        "http.response.status_code": call.http_status,
        "tokenomy.attempts": call.attempts,
    }
    if call.deployment is not None:
        attrs["tokenomy.deployment"] = call.deployment.id
    if u is not None:
        attrs["gen_ai.usage.input_tokens"] = u.input_tokens
        attrs["gen_ai.usage.output_tokens"] = u.output_tokens
    ledger = call.get(LEDGER)
    charge = ledger.charge if ledger is not None else None
    if charge is not None and charge.currency is not None:
        attrs["tokenomy.cost"] = charge.cost_str()
        attrs["tokenomy.currency"] = charge.currency.value
    span.set_attributes(attrs)
    span.end()
