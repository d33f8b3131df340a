"""OpenAI's Responses API: ``POST /v1/responses`` and the stored answers' routes.

A Responses request is served as the chat call it amounts to (see
``providers.translate_responses``), through the same pipeline as chat: one ``Call``
(endpoint ``responses``), held for, billed, metered and recorded the same way. Its answer
reaches the client through :class:`ResponsesExchange`, which turns the chat answer or
stream into a Response object or the Responses stream's events and stores the answer for
``previous_response_id`` chains. When the deployment chosen speaks the Responses API
itself (see ``gateway.responses_native``), the call passes through: the vendor's Response
or events reach the client under the gateway's response id, and are stored the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import (
    AioExchange,
    Exchange,
    authenticate,
    read_json,
    serve_call,
    services,
)
from tokenomy.core.call import Call
from tokenomy.core.errors import InvalidRequest, NotFound
from tokenomy.core.ids import stamped_id as new_id
from tokenomy.core.ids import stamped_id_age_s as id_age_s
from tokenomy.core.keys import ApiKey
from tokenomy.gateway import validation
from tokenomy.gateway.pipeline import Pipeline
from tokenomy.gateway.responses_native import passes_through
from tokenomy.providers.responses_passthrough import native_request
from tokenomy.providers.sse import frame_event, frames_data
from tokenomy.providers.translate_responses import (
    JSON,
    chat_answer_to_output,
    chat_request,
    finish,
    input_items,
    input_param,
    items_to_messages,
    response_object,
    responses_usage,
)
from tokenomy.providers.translate_responses_stream import ChatToResponsesStream
from tokenomy.store.responses import ResponseStore, StoredResponse

RESPONSE_STORE: web.AppKey[ResponseStore] = web.AppKey("response_store", ResponseStore)


def _owner(key: ApiKey) -> str:
    """Whose stored answers a key sees: its organisation's (its own without one)."""
    return key.org_id or key.id


def _not_found(response_id: str, param: str | None = None) -> NotFound:
    what = "Previous response" if param else "Response"
    return NotFound(
        f"{what} with id '{response_id}' not found.",
        param=param,
        code="previous_response_not_found" if param else "not_found",
    )


class ResponsesExchange:
    """The client's exchange seen through the Responses API: chat answers in, Responses
    objects and events out; a finished answer is stored (unless ``store`` is false)."""

    def __init__(
        self,
        inner: AioExchange,
        call: Call,
        request: JSON,
        items: list[JSON],
        context: list[JSON],
        store: ResponseStore,
        pipeline: Pipeline,
    ) -> None:
        self.inner = inner
        self.call = call
        self.request = request
        self.items = items
        self.context = context
        self.store = store
        self.pipeline = pipeline
        self.response_id = new_id("resp_")
        self._stream: ChatToResponsesStream | None = None
        self._pending: list[bytes] = []
        #: Passed through: the vendor's own events go out (renamed), and its final Response.
        self._native = False
        self._final: JSON | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.inner.headers

    async def body(self, limit: int) -> bytes:
        return await self.inner.body(limit)

    def _response(self) -> JSON:
        return response_object(self.request, self.response_id, self.call.public_model)

    def _usage(self, cost: str | None) -> JSON | None:
        u = self.call.usage
        if u is None:
            return None
        chat = u.to_openai()
        chat["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write_tokens
        # The cost goes out as the exact decimal the ledger charged, never a float.
        return responses_usage(chat, orjson.Fragment(cost.encode()) if cost else None)

    def _cost(self) -> str | None:
        if self.call.usage is None:
            return None
        return self.pipeline.quoter.quote(self.call).cost_str()

    def _ours(self, resp: JSON) -> None:
        """A vendor's Response under the gateway's id, as the client's request made it."""
        resp["id"] = self.response_id
        resp["previous_response_id"] = self.request.get("previous_response_id")
        resp["store"] = self.request.get("store") is not False
        if not isinstance(resp.get("output"), list):
            resp["output"] = []

    async def reply(self, body: bytes, headers: Mapping[str, str]) -> None:
        if passes_through(self.call, self.call.deployment):
            resp = orjson.loads(body)
            self._ours(resp)
            self._keep(resp)
            await self.inner.reply(orjson.dumps(resp), headers)
            return
        answer = orjson.loads(body)
        resp = self._response()
        resp["output"], reason = chat_answer_to_output(answer)
        finish(resp, reason)
        resp["usage"] = self._usage(headers.get("x-tokenomy-cost"))
        self._keep(resp)
        await self.inner.reply(orjson.dumps(resp), headers)

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        if passes_through(self.call, self.call.deployment):
            self._native = True
            await self.inner.start_stream(headers)
            return
        self._stream = ChatToResponsesStream(self._response())
        self._pending = self._stream.start()
        await self.inner.start_stream(headers)

    def _native_events(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        for d in frames_data(chunk):
            obj = orjson.loads(d)
            resp = obj.get("response") if isinstance(obj, dict) else None
            if isinstance(resp, dict):
                self._ours(resp)
                if obj.get("type") in ("response.completed", "response.incomplete"):
                    self._final = resp
                d = orjson.dumps(obj)
            kind = obj.get("type") if isinstance(obj, dict) else None
            out.append(frame_event(str(kind or "message"), d))
        return out

    def _events(self, chunk: bytes) -> list[bytes]:
        if self._native:
            return self._native_events(chunk)
        assert self._stream is not None
        out, self._pending = self._pending, []
        for d in frames_data(chunk):
            if d == b"[DONE]" or self._stream.ended:
                continue
            obj = orjson.loads(d)
            if not isinstance(obj, dict):
                continue
            if isinstance(obj.get("error"), dict):
                out += self._stream.fail(obj["error"])
            else:
                out += self._stream.feed(obj)
        return out

    async def send(self, chunk: bytes) -> None:
        events = self._events(chunk)
        if events:
            await self.inner.send(b"".join(events))

    async def end(self, chunk: bytes) -> None:
        events = self._events(chunk)
        if self._native:
            if self._final is not None and self.call.status == "ok":
                self._keep(self._final)
            await self.inner.end(b"".join(events))
            return
        assert self._stream is not None
        s = self._stream
        if not s.ended:
            if self.call.status == "ok":
                events += s.end(self._usage(self._cost()))
                self._keep(s.response)
            else:
                events += s.fail({"message": "The upstream stream ended before it was complete."})
        await self.inner.end(b"".join(events))

    def _keep(self, resp: JSON) -> None:
        """Store a finished answer with the conversation a chained call re-sends."""
        if self.request.get("store") is False:
            return
        context = self.context + items_to_messages(self.items) + items_to_messages(resp["output"])
        self.store.put(
            StoredResponse(
                id=self.response_id,
                owner=_owner(self.call.key),
                created_ms=int(time.time() * 1000),
                response=resp,
                input_items=self.items,
                context=context,
            )
        )


async def _lookup(store: ResponseStore, key: ApiKey, response_id: str) -> StoredResponse | None:
    age = id_age_s(response_id, "resp_")
    recent = age is not None and -5 < age < 5  # perhaps still being written by another replica
    return await store.get(_owner(key), response_id, recent=recent)


async def create_response(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    store = request.app[RESPONSE_STORE]
    key = authenticate(request.headers, svc)
    body = await read_json(request, svc)
    model = validation.require_model(body)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    items = input_items(body["input"])
    context: list[JSON] = []
    prev_id = body.get("previous_response_id")
    if prev_id is not None:
        if not isinstance(prev_id, str) or not prev_id:
            raise InvalidRequest(
                "'previous_response_id' must be a string.", param="previous_response_id"
            )
        prev = await _lookup(store, key, prev_id)
        if prev is None:
            raise _not_found(prev_id, "previous_response_id")
        context = prev.context
    if body.get("store") is not None and not isinstance(body.get("store"), bool):
        raise InvalidRequest("'store' must be a boolean.", param="store")
    sources: list[str] = []
    chat = chat_request(body, context, items, sources)
    server = svc.config.server
    stream = validation.check_chat(chat, server.max_messages + len(context), server.max_choices)
    call = Call(
        endpoint="responses",
        dialect="openai",
        body=chat,
        model=model,
        stream=stream,
        key=key,
        wants_usage=True,
    )
    call.native = native_request(body, context)
    meta = body.get("metadata")
    if isinstance(meta, dict) and meta.get("task_id") is not None:
        call.task_name = meta["task_id"]  # the X-Tokenomy-Task header wins
    inner = AioExchange(request)
    ex: Exchange = ResponsesExchange(inner, call, body, items, context, store, svc.pipeline)
    try:
        await serve_call(ex, svc, call)
    except InvalidRequest as e:
        # A part the target vendor's protocol cannot carry, found when the chat body was
        # translated for it: named as the Responses input item the client wrote.
        e.param = input_param(e.param, sources)
        raise
    assert inner.response is not None
    return inner.response


async def _stored(request: web.Request) -> StoredResponse:
    svc = services(request)
    key = authenticate(request.headers, svc)
    rid = request.match_info["response_id"]
    stored = await _lookup(request.app[RESPONSE_STORE], key, rid)
    if stored is None:
        raise _not_found(rid)
    return stored


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def get_response(request: web.Request) -> web.Response:
    return _json((await _stored(request)).response)


async def delete_response(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    rid = request.match_info["response_id"]
    if not await request.app[RESPONSE_STORE].delete(_owner(key), rid):
        raise _not_found(rid)
    return _json({"id": rid, "object": "response", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    """This answer's input items, newest first by default (``order``, ``limit``,
    ``after``, ``before`` as OpenAI's list endpoints take them)."""
    stored = await _stored(request)
    q = request.query
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    ids = [i.get("id") for i in items]
    for name in ("after", "before"):
        cursor = q.get(name)
        if cursor is not None:
            if cursor not in ids:
                raise InvalidRequest(f"'{name}' names no item of this response.", param=name)
            at = ids.index(cursor)
            items, ids = (
                (items[at + 1 :], ids[at + 1 :]) if name == "after" else (items[:at], ids[:at])
            )
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


def add_routes(
    app: web.Application, store: ResponseStore, *, purge_interval_s: float = 3600.0
) -> None:
    """The routes, the purge of answers past their retention (every ``purge_interval_s``),
    and the store's writes drained on shutdown (before the database goes)."""
    app[RESPONSE_STORE] = store
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)

    async def drain(_app: web.Application) -> None:
        await store.drain()

    async def purge(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(store.purge_every(purge_interval_s), name="responses-purge")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(purge)
    app.on_cleanup.append(drain)
