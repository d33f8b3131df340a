"""OpenAI's Videos API, simulated: a job renders for ``video_ms_per_second`` per second of
output and then serves a small animated GIF (see ``media.py``).

A prompt containing ``[fail]`` ends failed, as a vendor's moderation would end it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tokenomy.sim.errors import Dialect, error_response
from tokenomy.sim.media import CONTENT_TYPE, render_gif
from tokenomy.sim.state import STATE


@dataclass
class SimVideo:
    id: str
    model: str
    prompt: str
    seconds: int
    size: str
    created: float
    ready_at: float

    def obj(self, now: float) -> dict[str, Any]:
        span = max(self.ready_at - self.created, 1e-9)
        done = now >= self.ready_at
        failed = done and "[fail]" in self.prompt
        status = "failed" if failed else "completed" if done else "in_progress"
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": 100 if done else int(100 * (now - self.created) / span),
            "created_at": int(self.created),
            "completed_at": int(self.ready_at) if done else None,
            "expires_at": None,
            "seconds": str(self.seconds),
            "size": self.size,
            "error": {"code": "moderation_blocked", "message": "Simulated refusal."}
            if failed
            else None,
        }


VIDEOS: web.AppKey[dict[str, SimVideo]] = web.AppKey("sim_videos", dict)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def create(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
        seconds = int(body.get("seconds", 4))
        prompt = str(body["prompt"])
    except (ValueError, KeyError, TypeError):
        return error_response(Dialect.OPENAI, 400, "Send JSON with prompt and seconds.")
    if seconds < 1:
        return error_response(Dialect.OPENAI, 400, "seconds must be positive.", param="seconds")
    ms = request.app[STATE].settings.video_ms_per_second
    now = time.time()
    v = SimVideo(
        id=f"video_{secrets.token_hex(12)}",
        model=str(body.get("model", "sim-video")),
        prompt=prompt,
        seconds=seconds,
        size=str(body.get("size", "720x1280")),
        created=now,
        ready_at=now + seconds * ms / 1000,
    )
    request.app[VIDEOS][v.id] = v
    return _json(v.obj(now))


def _find(request: web.Request) -> SimVideo | None:
    return request.app[VIDEOS].get(request.match_info["video_id"])


async def retrieve(request: web.Request) -> web.StreamResponse:
    v = _find(request)
    if v is None:
        return error_response(Dialect.OPENAI, 404, "No such video.")
    return _json(v.obj(time.time()))


async def content(request: web.Request) -> web.StreamResponse:
    v = _find(request)
    if v is None:
        return error_response(Dialect.OPENAI, 404, "No such video.")
    if v.obj(time.time())["status"] != "completed":
        return error_response(Dialect.OPENAI, 409, "The video is not ready.")
    return web.Response(body=render_gif(v.prompt, v.seconds), content_type=CONTENT_TYPE)


def add_routes(app: web.Application) -> None:
    app[VIDEOS] = {}
    app.router.add_post("/v1/videos", create)
    app.router.add_get("/v1/videos/{video_id}", retrieve)
    app.router.add_get("/v1/videos/{video_id}/content", content)
