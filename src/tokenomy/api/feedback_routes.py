"""``POST /v1/feedback``: a client scores one of its organisation's requests (0–1).

The score is kept beside the request's usage record; ``tokenomy router export`` turns an
organisation's scored requests into training rows for the learned router. The prompt's
end comes from the gateway's memory of recent ``auto`` requests, or from the feedback's
own ``prompt`` field (for a request another replica served, or one long ago).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tokenomy.api.edge import authenticate, read_json, services
from tokenomy.core.errors import InvalidRequest, NotFound
from tokenomy.routing.learned import TAIL_CHARS
from tokenomy.store import feedback

MAX_COMMENT = 4000


async def post_feedback(request: web.Request) -> web.Response:
    svc = services(request)
    key = authenticate(request.headers, svc)
    body = await read_json(request, svc)
    rid = body.get("request_id")
    if (
        not isinstance(rid, str)
        or not 0 < len(rid) <= 64
        or not (rid.isascii() and rid.isprintable())
    ):
        raise InvalidRequest("'request_id' must be a request id string.", param="request_id")
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise InvalidRequest("'score' must be a number from 0 to 1.", param="score")
    comment = _text(body, "comment", MAX_COMMENT)
    prompt = _text(body, "prompt", None)
    if prompt is not None:
        prompt = prompt[-TAIL_CHARS:]  # all the router ever reads
    elif svc.pipeline.auto is not None:
        prompt = svc.pipeline.auto.recent_prompt(rid)
    args = (svc.engine, key, rid, float(score), comment, prompt)
    found = await asyncio.to_thread(feedback.record, *args)
    if not found and not svc.usage_writer.synchronous:
        # Its usage record may still sit in the writer's batch: look again once the next
        # group commit is due (not forcing one: any key could then defeat group commits).
        await asyncio.sleep(2 * svc.usage_writer.flush_interval_s + 0.05)
        found = await asyncio.to_thread(feedback.record, *args)
    if not found:
        raise NotFound(
            f"No request '{rid}' of this API key's organisation.",
            param="request_id",
            code="request_not_found",
        )
    out: dict[str, Any] = {"object": "feedback", "request_id": rid, "score": score}
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _text(body: dict[str, Any], field: str, most: int | None) -> str | None:
    v = body.get(field)
    if v is None:
        return None
    if not isinstance(v, str) or (most is not None and len(v) > most) or "\0" in v:
        limit = f" of at most {most} characters" if most else ""
        raise InvalidRequest(f"'{field}' must be a string{limit}, without NUL.", param=field)
    return v


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/feedback", post_feedback)
