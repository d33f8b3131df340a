"""OpenAI's Videos API over the video queue, and ``GET /v1/queue``.

``POST /v1/videos`` takes JSON or a form (the official SDK sends multipart/form-data);
the job waits in its model's fair queue and a worker in any gateway process renders it
(see ``tokenomy.videos.worker``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from tokenomy.api.batch_routes import caller, json_ok
from tokenomy.api.edge import read_json
from tokenomy.api.openai_routes import JOB_QUEUES
from tokenomy.batches.holds import LineHolds
from tokenomy.core.errors import GatewayError, InvalidRequest, NotFound
from tokenomy.providers.videos import VideoClient
from tokenomy.services import Services
from tokenomy.store.videos import ENDED, IN_PROGRESS, VideoStore
from tokenomy.videos.intake import VideoIntake
from tokenomy.videos.models import VideoModels, build_video_models
from tokenomy.videos.objects import video_object
from tokenomy.videos.worker import VideoWorker

_FIELDS = ("model", "prompt", "seconds", "size")


class Videos:
    """The video store, intake and worker of one gateway process."""

    def __init__(self, svc: Services, models: VideoModels) -> None:
        self.store = VideoStore(svc.engine)
        holds = LineHolds(svc.live, svc.accounts)
        self.intake = VideoIntake(svc, self.store, models, holds)
        self.worker = VideoWorker(svc, self.store, models, holds, svc.config.videos, VideoClient())


VIDEOS: web.AppKey[Videos] = web.AppKey("videos", Videos)


async def _body(request: web.Request, svc: Services) -> dict[str, Any]:
    """The create request's fields, from JSON or a form (fields arrive as strings)."""
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        limit = svc.config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise InvalidRequest("The request body is too large.")
        form = await request.post()
        if "input_reference" in form:
            raise InvalidRequest("input_reference is not supported here.", param="input_reference")
        return {k: v for k, v in form.items() if k in _FIELDS and isinstance(v, str)}
    return await read_json(request, svc)


async def create_video(request: web.Request) -> web.Response:
    svc, key, owner = caller(request)
    v = request.app[VIDEOS]
    body = await _body(request, svc)
    m = v.intake.models.by_name.get(str(body.get("model")))
    retry = v.worker.view.retry_after(m) if m is not None else 1.0
    row = await v.intake.submit(key, owner, body, retry)
    v.worker.wake()
    return json_ok(video_object(row, await v.worker.view.slot(row)))


async def _own(request: web.Request) -> tuple[Videos, dict[str, Any], str]:
    _svc, _key, owner = caller(request)
    v = request.app[VIDEOS]
    vid = request.match_info["video_id"]
    row = await asyncio.to_thread(v.store.get, vid, owner)
    if row is None:
        raise NotFound(f"No such video: {vid}", param="video_id", code="video_not_found")
    return v, row, owner


async def get_video(request: web.Request) -> web.Response:
    v, row, _ = await _own(request)
    return json_ok(video_object(row, await v.worker.view.slot(row)))


async def video_content(request: web.Request) -> web.Response:
    v, row, _ = await _own(request)
    variant = request.query.get("variant", "video")
    if variant != "video":
        raise InvalidRequest(
            f"variant '{variant}' is not available; only 'video' is.", param="variant"
        )
    if row["status"] != "completed":
        err = GatewayError(
            f"The video is {row['status']}, not completed: it has no content yet.",
            code="video_not_ready",
        )
        err.status, err.type = 409, "invalid_request_error"
        raise err
    got = await asyncio.to_thread(v.store.output, row["id"])
    if got is None:
        raise NotFound("The video's content has been deleted.", code="video_not_found")
    content_type, data = got
    return web.Response(body=data, content_type=content_type)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    n = int(raw) if raw.isdigit() else 0
    if not 1 <= n <= 100:
        raise InvalidRequest("limit must be a whole number from 1 to 100.", param="limit")
    return n


async def list_videos(request: web.Request) -> web.Response:
    _svc, _key, owner = caller(request)
    v = request.app[VIDEOS]
    limit = _limit(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    rows = await asyncio.to_thread(
        v.store.page,
        owner,
        after=request.query.get("after"),
        limit=limit + 1,
        ascending=order == "asc",
    )
    page = [video_object(r, await v.worker.view.slot(r)) for r in rows[:limit]]
    return json_ok(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(rows) > limit,
        }
    )


async def delete_video(request: web.Request) -> web.Response:
    """Delete an ended video and its content; a queued one is cancelled first (its hold
    released). A rendering one cannot be deleted (409)."""
    v, row, owner = await _own(request)
    if row["status"] == "queued":
        if await asyncio.to_thread(v.store.cancel, row["id"], owner, int(time.time() * 1000)):
            await v.worker.sweep()  # releases the hold now
        now_row = await asyncio.to_thread(v.store.get, row["id"], owner)
        row = now_row if now_row is not None else row
    if row["status"] == IN_PROGRESS or row["status"] not in ENDED:
        err = GatewayError(
            "The video is rendering; delete it once it has completed or failed.",
            code="video_in_progress",
        )
        err.status, err.type = 409, "invalid_request_error"
        raise err
    await asyncio.to_thread(v.store.delete, row["id"])
    return json_ok({"id": row["id"], "object": "video.deleted", "deleted": True})


def add_routes(app: web.Application, svc: Services) -> None:
    v = app[VIDEOS] = Videos(svc, build_video_models(svc.config))
    app.router.add_post("/v1/videos", create_video)
    app.router.add_get("/v1/videos", list_videos)
    app.router.add_get("/v1/videos/{video_id}", get_video)
    app.router.add_delete("/v1/videos/{video_id}", delete_video)
    app.router.add_get("/v1/videos/{video_id}/content", video_content)
    app[JOB_QUEUES] = v.worker.view.queue_json
    _register_gauges(svc, v.worker)

    async def start(_app: web.Application) -> None:
        await v.worker.start()

    async def stop(_app: web.Application) -> None:
        await v.worker.stop()

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)


def _register_gauges(svc: Services, w: VideoWorker) -> None:
    m = svc.metrics
    m.gauge("tokenomy_video_jobs_queued", "Video jobs waiting in a queue (every process's).",
            lambda: w.count("queued"))  # fmt: skip
    m.gauge("tokenomy_video_jobs_running", "Video jobs rendering now (every process's).",
            lambda: w.count("in_progress"))  # fmt: skip
    m.gauge("tokenomy_video_jobs_done_total", "Video jobs this process ended.",
            lambda: w.done, kind="counter")  # fmt: skip
    m.gauge("tokenomy_video_oldest_queued_age_seconds", "Age of the oldest video job waiting.",
            w.oldest_age_s)  # fmt: skip
