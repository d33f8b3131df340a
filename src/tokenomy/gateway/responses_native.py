"""Responses passthrough: a Responses call served by a vendor that speaks the API itself.

A deployment with the ``responses`` capability (OpenAI's models in the catalogue, or any
OpenAI-dialect deployment configured so) gets the client's Responses request as it came
(the model substituted, the chain expanded by the gateway, ``store: false``), and the
client gets the vendor's Response object or semantic events back. The call is metered
from the vendor's own usage (``input_tokens``, ``input_tokens_details.cached_tokens``,
``output_tokens``, ``output_tokens_details.reasoning_tokens``), or counted locally when
the vendor gives none, as chat is: a stream cut before ``response.completed`` is billed
for what the client received.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from tokenomy.core.call import Call
from tokenomy.core.errors import GatewayError, UpstreamError, UpstreamTimeout
from tokenomy.core.registry import Deployment
from tokenomy.core.usage import Usage
from tokenomy.gateway.relay import StreamRelay
from tokenomy.providers.base import UpstreamResponse
from tokenomy.providers.sse import SSEEvent, frame_event
from tokenomy.providers.translate_responses import responses_usage

#: The capability of a deployment whose vendor serves ``/responses`` itself.
RESPONSES = "responses"

#: The events that end a Response with its usage.
_DONE = frozenset({"response.completed", "response.incomplete"})
_STREAM_ERRORS = (TimeoutError, ConnectionError)


def passes_through(call: Call, dep: Deployment | None) -> bool:
    """Whether ``call`` goes to ``dep`` as the Responses request it is."""
    return (
        call.native is not None
        and dep is not None
        and RESPONSES in dep.capabilities
        and dep.vendor.dialect == "openai"
    )


def _int(v: Any) -> int:
    """A non-negative count from a vendor field that may be missing, null or malformed."""
    return max(0, int(v)) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def usage_from_responses(u: dict[str, Any]) -> Usage:
    """Read a Responses usage object (cached and reasoning tokens are parts of the totals)."""
    inp, out = _int(u.get("input_tokens")), _int(u.get("output_tokens"))
    idet, odet = u.get("input_tokens_details"), u.get("output_tokens_details")
    cached = _int(idet.get("cached_tokens")) if isinstance(idet, dict) else 0
    reasoning = _int(odet.get("reasoning_tokens")) if isinstance(odet, dict) else 0
    return Usage(
        input_tokens=inp,
        cached_tokens=min(cached, inp),
        output_tokens=out,
        reasoning_tokens=min(reasoning, out),
    )


def usage_to_responses(usage: Usage) -> dict[str, Any]:
    """Our usage (a local count) in the Responses shape."""
    out = responses_usage(usage.to_openai())
    assert out is not None
    return out


def output_text(output: Any) -> str:
    """The text a Response's output items carry, for counting them locally."""
    parts: list[str] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            parts += [str(item.get("name") or ""), str(item.get("arguments") or "")]
        for key in ("content", "summary"):
            for p in item.get(key) or ():
                if isinstance(p, dict):
                    parts.append(str(p.get("text") or p.get("refusal") or ""))
    return "".join(parts)


def meter_answer(
    call: Call, raw: bytes, who: str, count: Callable[[], Usage], cost: Callable[[Call], str] | None
) -> tuple[bytes, str | None]:
    """A whole Response metered (the vendor's usage, else our count, which then goes out in
    it), named by the public model, with its cost; the body and the cost."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{who} answered with invalid JSON.") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"{who} answered with an unexpected body.")
    u = obj.get("usage")
    if isinstance(u, dict):
        call.usage = usage_from_responses(u)
    else:
        call.output_text.append(output_text(obj.get("output")))
        call.usage = count()
        u = obj["usage"] = usage_to_responses(call.usage)
    obj["model"] = call.public_model
    price = cost(call) if cost is not None else None
    if price is not None:
        u["cost"] = orjson.Fragment(price.encode())  # exact, never a float
    return orjson.dumps(obj), price


class ResponsesRelay(StreamRelay):
    """Relays a vendor's Responses events, metering them: the usage on
    ``response.completed``, else a count of the deltas the client received."""

    def __init__(
        self,
        call: Call,
        upstream: UpstreamResponse,
        *,
        prompt_tokens_hint: Callable[[], int],
        count_usage: Callable[[], Usage],
    ) -> None:
        super().__init__(
            call,
            upstream,
            "openai",
            prompt_tokens_hint=prompt_tokens_hint,
            count_usage=count_usage,
        )
        self._texts: list[str] = []
        self._seq = -1
        self._last: dict[str, Any] | None = None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        call = self.call
        try:
            async for batch in self.upstream.event_batches():
                out = b"".join(self._event(ev) for ev in batch)
                if out:
                    yield out
            if not self.completed and call.status != "upstream_error":
                cut: GatewayError = UpstreamError(
                    "The upstream stream ended before it was complete."
                )
                self._fail(cut)
                yield self._failed(cut)
        except _STREAM_ERRORS as e:
            err: GatewayError = (
                UpstreamTimeout("The upstream stream stalled and was cut off.")
                if isinstance(e, TimeoutError)
                else UpstreamError(f"The upstream stream broke off: {type(e).__name__}.")
            )
            self._fail(err)
            yield self._failed(err)
        finally:
            self.upstream.release()
            if call.usage is None and self._texts:
                call.output_text[:] = ["".join(self._texts)]  # counted when settled

    def _event(self, ev: SSEEvent) -> bytes:
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return b""  # not an event of the API (a keep-alive, a stray line)
        if not isinstance(obj, dict):
            return b""
        kind = str(obj.get("type") or ev.event or "")
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self._seq = seq
        data = ev.data
        if kind.endswith(".delta"):
            self.call.mark_first_token()
            delta = obj.get("delta")
            if isinstance(delta, str) and "audio" not in kind:
                self._texts.append(delta)
        elif isinstance(obj.get("response"), dict):
            self._response(kind, obj["response"])
            data = orjson.dumps(obj)
        elif kind == "error":
            self.call.status = "upstream_error"
        return frame_event(kind, data)

    def _response(self, kind: str, resp: dict[str, Any]) -> None:
        call = self.call
        resp["model"] = call.public_model
        self._last = resp
        u = resp.get("usage")
        if kind == "response.failed":
            call.status = "upstream_error"
            if isinstance(u, dict):
                call.usage = usage_from_responses(u)
            return
        if kind not in _DONE:
            return
        if isinstance(u, dict):
            call.usage = usage_from_responses(u)
        else:  # a silent vendor: counted before the end leaves, and the client told
            call.output_text[:] = ["".join(self._texts)]
            call.usage = self._count()
            u = resp["usage"] = usage_to_responses(call.usage)
        if self.cost is not None:
            u["cost"] = orjson.Fragment(self.cost(call).encode())
        self.completed = True

    def _failed(self, err: GatewayError) -> bytes:
        """An ``error`` event and ``response.failed``, as a vendor ends a failed stream."""
        error = orjson.loads(err.openai_body())["error"]
        self._seq += 1
        out = frame_event(
            "error",
            orjson.dumps(
                {
                    "type": "error",
                    "code": error["code"],
                    "message": error["message"],
                    "param": None,
                    "sequence_number": self._seq,
                }
            ),
        )
        if self._last is None:
            return out
        resp = {
            **self._last,
            "status": "failed",
            "error": {"code": error["code"] or "server_error", "message": error["message"]},
        }
        self._seq += 1
        failed = {"type": "response.failed", "sequence_number": self._seq, "response": resp}
        return out + frame_event("response.failed", orjson.dumps(failed))
