"""What every /v1 route shares: reading bodies, authenticating, running the pipeline.

A call is served through an :class:`Exchange`, one request and its answer, so the same
code runs under aiohttp (``AioExchange``) and under the lean server that carries the
inference routes (``tokenomy.api.lean_server``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from tokenomy.aio import shield_inline
from tokenomy.core.call import Call, new_request_id
from tokenomy.core.errors import GatewayError, InvalidRequest, PayloadTooLarge, Unauthorized
from tokenomy.core.keys import ApiKey
from tokenomy.gateway.relay import StreamRelay
from tokenomy.gateway.validation import MAX_DEPTH, too_deep
from tokenomy.routing.auto import parse_bar
from tokenomy.services import Services

log = logging.getLogger(__name__)

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

#: The routes the lean server answers itself (see ``lean_server``).
INFERENCE_ROUTES: web.AppKey[tuple[InferenceRoute, ...]] = web.AppKey("inference_routes", tuple)

#: The header naming the request (and its usage record) on every answer.
REQUEST_ID = "x-request-id"

#: Status recorded for a request whose client went away (nginx's convention).
CLIENT_CLOSED = 499

#: The headers an SSE answer adds to the call's own.
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Exchange(Protocol):
    """One request and its answer, whichever server carries them.

    ``headers`` answers lower-case names. A stream's headers leave with its first events,
    not in a write of their own: the upstream has answered by the time it starts, and a
    stream that arrives whole goes out as one write (headers, events, end of body).
    """

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def body(self, limit: int) -> bytes:
        """The request body; PayloadTooLarge past ``limit`` bytes."""
        ...

    async def reply(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Answer 200 with a JSON body."""
        ...

    async def start_stream(self, headers: Mapping[str, str]) -> None: ...

    async def send(self, chunk: bytes) -> None:
        """Part of the stream; ConnectionResetError once the client has gone."""
        ...

    async def end(self, chunk: bytes) -> None:
        """The stream's last part and the end of its body."""
        ...


#: Builds a route's call from its parsed body and the caller's key.
CallBuilder = Callable[[dict[str, Any], ApiKey, Services], Call]


@dataclass(frozen=True, slots=True)
class InferenceRoute:
    """A POST route that runs a call through the pipeline."""

    path: str
    build: CallBuilder
    anthropic: bool = False  # errors in Anthropic's shape, not OpenAI's


def internal_error() -> GatewayError:
    """What the client is told of a failure of ours (the details go to the log)."""
    return GatewayError("The gateway hit an internal error; the request was not completed.")


def error_parts(err: GatewayError, anthropic: bool) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body of an error, in the route's dialect.

    Every error names a request id: the call's own when one was made (its record has it),
    else a fresh one, so that a support request can always quote one.
    """
    if anthropic:
        body = err.anthropic_body()
        if err.param and err.param not in err.message:
            # Anthropic's error has no field for the parameter: the message says where.
            obj = orjson.loads(body)
            obj["error"]["message"] = f"{err.message} (at {err.param})"
            body = orjson.dumps(obj)
    else:
        body = err.openai_body()
    headers = err.response_headers()
    if REQUEST_ID not in headers:
        headers[REQUEST_ID] = new_request_id()
    return err.status, headers, body


class EventStream(web.StreamResponse):
    """An SSE response whose headers leave with its first events (see Exchange).

    Seam: aiohttp has no public switch for this; its own ``web.Response`` turns the
    private class attribute off the same way (checked against the pinned aiohttp range).
    """

    _send_headers_immediately = False


class AioExchange:
    """An exchange carried by aiohttp; ``response`` is what the handler returns."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    async def body(self, limit: int) -> bytes:
        return await read_body(self.request, limit)

    async def reply(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.response = web.Response(body=body, headers=headers, content_type="application/json")

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        resp = EventStream(headers=headers)
        await resp.prepare(self.request)
        self.response = resp

    async def send(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write_eof(chunk)


def aio_handler(route: InferenceRoute) -> Callable[[web.Request], Any]:
    """The aiohttp handler of an inference route."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ex = AioExchange(request)
        await run_inference(ex, request.app[SERVICES], route.build)
        assert ex.response is not None
        return ex.response

    return handle


async def run_inference(ex: Exchange, svc: Services, build: CallBuilder) -> None:
    """Authenticate, read and validate the body, and serve the call it asks for."""
    key = authenticate(ex.headers, svc)
    body = parse_json(await ex.body(svc.config.server.max_body_bytes))
    await serve_call(ex, svc, build(body, key, svc))


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key") or headers.get("api-key")


def authenticate(headers: Mapping[str, str], svc: Services) -> ApiKey:
    secret = presented_key(headers)
    if not secret:
        raise Unauthorized(
            "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>' "
            "(or 'x-api-key: <key>')."
        )
    key = svc.key_cache.lookup(secret)
    if key is None:
        raise Unauthorized("Incorrect API key provided, or the key was revoked.")
    return key


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"The request body is not valid JSON: {e}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if too_deep(raw, body):
        raise InvalidRequest(
            f"The request body is nested too deeply (more than {MAX_DEPTH} levels of "
            "arrays and objects)."
        )
    return body


async def read_json(request: web.Request, svc: Services) -> dict[str, Any]:
    return parse_json(await read_body(request, svc.config.server.max_body_bytes))


def _seconds(text: str, header: str, most: float = 3600) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise InvalidRequest(f"{header} must be a number of seconds from 0 to {most:g}.")
    return value


async def serve_call(ex: Exchange, svc: Services, call: Call) -> None:
    """Run a call through the pipeline and answer the client; records it exactly once.
    Counted in flight meanwhile (``pipeline.traffic``): batch work yields to it."""
    pipeline = svc.pipeline
    relay = None
    headers = ex.headers
    traffic = pipeline.traffic
    traffic.started += 1
    traffic.in_flight += 1
    try:
        wait = headers.get("x-tokenomy-max-wait")
        if wait is not None:
            call.max_wait_s = _seconds(wait, "X-Tokenomy-Max-Wait")
        task = headers.get("x-tokenomy-task")
        if task is not None:
            call.task_name = task
        deadline = headers.get("x-tokenomy-deadline")
        if deadline is not None:
            call.deadline_s = _seconds(deadline, "X-Tokenomy-Deadline", 86_400)
        bar = headers.get("x-tokenomy-min-quality")
        if bar is not None:
            call.min_quality = parse_bar(bar, "X-Tokenomy-Min-Quality")
        if pipeline.tracer is not None:
            call.span = pipeline.tracer.start_span(
                "tokenomy.request",
                attributes={
                    "tokenomy.request_id": call.request_id,
                    "tokenomy.endpoint": call.endpoint,
                    "gen_ai.request.model": call.model,
                    "tokenomy.key_id": call.key.id,
                    "tokenomy.stream": call.stream,
                },
            )
        pipeline.route(call)
        outcome = await pipeline.open(call)
        if outcome.relay is None:
            assert outcome.body is not None  # an answer is a body or a stream
            await ex.reply(outcome.body, outcome.headers)
            return
        relay = outcome.relay
        await ex.start_stream({**outcome.headers, **STREAM_HEADERS})
        chunks = relay.chunks()
        ended = False
        try:
            async for chunk in chunks:
                if ended:
                    continue  # past the end the client was given: drain, keep the connection
                if relay.completed:
                    if not call.finished:
                        # The client must not see the end of a stream that is not recorded:
                        # settle and record (and in synchronous mode commit) first.
                        await _finish(svc, call, relay)
                    # The last events and the end of the body leave in one write.
                    await ex.end(chunk)
                    ended = True
                else:
                    await ex.send(chunk)
            if not ended:
                # Cut upstream (its error went in-band): recorded before the body ends too.
                if not call.finished:
                    await _finish(svc, call, relay)
                await ex.end(b"")
        except ConnectionResetError:
            # Gone before the end: cancelled, unless everything was already sent.
            if not relay.completed:
                call.status, call.http_status = "cancelled", CLIENT_CLOSED
        finally:
            await chunks.aclose()
    except GatewayError as e:
        pipeline.fail(call, e)
        e.headers[REQUEST_ID] = call.request_id
        raise
    except asyncio.CancelledError:
        call.status, call.http_status = "cancelled", CLIENT_CLOSED
        raise
    except Exception:
        call.status, call.http_status, call.error_code = "error", 500, "internal_error"
        raise
    finally:
        try:
            if relay is not None:
                # A stream whose response never started (the client went away first)
                # would otherwise keep its upstream connection reading into memory.
                relay.upstream.release()
            await _finish(svc, call, relay)
        finally:
            traffic.in_flight -= 1


async def _finish(svc: Services, call: Call, relay: StreamRelay | None) -> None:
    """Settle and record the call once; in synchronous mode, commit before returning."""
    if call.finished:
        return
    # Shielded: a client that goes away must not stop its call being settled. Inline:
    # settling in process memory never waits, and a task per request cost more than it.
    await shield_inline(svc.pipeline.finish(call, relay))
    if svc.usage_writer.synchronous:
        await asyncio.shield(svc.usage_writer.flush())
