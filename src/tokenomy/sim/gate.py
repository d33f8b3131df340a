"""The checks every API request passes: JSON body, field types, and its fault, if any."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim.errors import Dialect, error_response
from tokenomy.sim.sse import Plan, drop_connection, hold
from tokenomy.sim.state import STATE

#: The model a request named, and its outcome when not its HTTP status (for ``/_sim/stats``).
MODEL = web.RequestKey("tokenomy_sim_model", str)
OUTCOME = web.RequestKey("tokenomy_sim_outcome", str)


class Rejected(Exception):
    """Ends a request early with a ready response (the middleware returns it)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def bad_request(dialect: Dialect, message: str, param: str | None = None) -> Rejected:
    return Rejected(error_response(dialect, 400, message, param=param))


async def read_body(request: web.Request, dialect: Dialect) -> dict[str, Any]:
    """The request's JSON object; a 400 in the dialect's format if it is not one."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(dialect, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise bad_request(dialect, "The request body must be a JSON object.")
    return body


def model_of(request: web.Request, body: dict[str, Any], dialect: Dialect) -> str:
    """The required ``model`` field, remembered on the request for the stats."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(dialect, "you must provide a model parameter", "model")
    request[MODEL] = model
    return model


def int_field(
    body: dict[str, Any], key: str, dialect: Dialect, *, low: int = 1, high: int = 1 << 31
) -> int | None:
    """An optional integer field within [low, high]."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(dialect, f"{key} must be an integer from {low} to {high}", key)
    return value


def stop_field(body: dict[str, Any], key: str, dialect: Dialect) -> tuple[str, ...]:
    """Stop sequences: a string or a list of strings (absent or null means none)."""
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise bad_request(dialect, f"{key} must be a string or a list of strings", key)


async def meet_fault(request: web.Request, dialect: Dialect, model: str, stream: bool) -> Plan:
    """Apply this request's fault, and say how to deliver the answer.

    A status fault ends the request, a timeout holds it, "slow" paces it at
    ``slow_tokens_per_second``, and a disconnect drops a non-streamed request unanswered or
    cuts a stream after ``after_chunks`` events.
    """
    state = request.app[STATE]
    settings = state.settings
    plan = Plan(settings.ttft_ms / 1000.0, settings.tokens_per_second)
    fault = state.fault(model)
    if fault is None:
        return plan
    request[OUTCOME] = fault.kind
    if fault.kind == "status":
        del request[OUTCOME]  # the HTTP status is the outcome
        headers = {}
        if fault.status == 429:
            headers["Retry-After"] = str(settings.retry_after_s)
        raise Rejected(error_response(dialect, fault.status, headers=headers))
    if fault.kind == "timeout":
        await hold(request, settings.timeout_s)
        return plan
    if fault.kind == "slow":
        return Plan(plan.ttft_s, settings.slow_tokens_per_second)
    if not stream:
        drop_connection(request)
        raise Rejected(web.Response(status=502))
    return Plan(plan.ttft_s, plan.tps, fault.after_chunks)
