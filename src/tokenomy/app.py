"""create_app(config): build the services once and wire the HTTP routes over them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from tokenomy.api import (
    admin,
    anthropic_routes,
    batch_routes,
    feedback_routes,
    ledger_admin,
    message_batch_routes,
    openai_routes,
    responses_routes,
    tasks_routes,
    usage_routes,
    video_routes,
    writer_admin,
)
from tokenomy.api.edge import (
    INFERENCE_ROUTES,
    REQUEST_ID,
    SERVICES,
    aio_handler,
    error_parts,
    internal_error,
)
from tokenomy.batches.worker import WorkerSettings
from tokenomy.batches.yielding import YieldSettings
from tokenomy.config import Config
from tokenomy.core.call import new_request_id
from tokenomy.core.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge
from tokenomy.services import Services, build_services
from tokenomy.store.responses import ResponseStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _render(err: GatewayError, request: web.Request) -> web.Response:
    status, headers, body = error_parts(err, request.path.startswith("/v1/messages"))
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON in the route's dialect: never a traceback or HTML page."""
    try:
        if "%00" in request.raw_path:
            # No name or value here holds a NUL byte, and PostgreSQL refuses one in text.
            raise InvalidRequest("The request's path or query holds a NUL byte (%00).")
        resp = await handler(request)
    except GatewayError as e:
        return _render(e, request)
    except web.HTTPException as e:
        if e.status == 404:
            return _render(
                NotFound(f"Unknown endpoint {request.method} {request.path}.", code="unknown_url"),
                request,
            )
        if e.status == 405:
            err = InvalidRequest(f"Method {request.method} is not allowed on {request.path}.")
            err.status = 405
            return _render(err, request)
        if e.status == 413:
            return _render(PayloadTooLarge("The request body is too large."), request)
        raise
    except UnicodeDecodeError:
        # Text a client sent (a form, a body read as text) that is not UTF-8.
        return _render(InvalidRequest("The request holds bytes that are not UTF-8."), request)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render(internal_error(), request)
    if not resp.prepared and REQUEST_ID not in resp.headers:
        resp.headers[REQUEST_ID] = new_request_id()
    return resp


async def healthz(request: web.Request) -> web.Response:
    """200 while the replica serves and its writer keeps up; 503 once the writer is
    behind (a database down or refusing every write), so a balancer stops sending it
    requests whose records would only pile up in memory."""
    svc = request.app[SERVICES]
    writer = svc.usage_writer.health()
    wc = svc.config.writer
    behind = writer.behind(wc.health_max_lag_s, wc.health_max_pending)
    body = {
        "status": "unhealthy" if behind else "ok",
        "models": len(svc.registry.routes),
        "writer_pending": writer.pending,
        "writer": {
            "pending": writer.pending,
            "oldest_age_s": writer.oldest_age_s,
            # The kind of error only: its text may name the database's host and user, and
            # this answer needs no key (the log has the whole message).
            "last_error": writer.last_error.split(":", 1)[0] if writer.last_error else None,
            "dead_letters": writer.dead_letters,
        },
    }
    return web.Response(
        body=orjson.dumps(body), status=503 if behind else 200, content_type="application/json"
    )


def create_app(config: Config, env: Mapping[str, str] | None = None) -> web.Application:
    svc = build_services(config, env)
    return app_for(svc)


def app_for(svc: Services, *, rollup_interval_s: float = 2.0) -> web.Application:
    # Bodies are bounded by our own check (for a JSON error); aiohttp's cap sits just above it.
    app = web.Application(
        middlewares=[error_middleware], client_max_size=svc.config.server.max_body_bytes + 1
    )
    app[SERVICES] = svc
    # The inference routes, as aiohttp serves them and as the lean server finds them.
    app[INFERENCE_ROUTES] = openai_routes.INFERENCE + anthropic_routes.INFERENCE
    for route in app[INFERENCE_ROUTES]:
        app.router.add_post(route.path, aio_handler(route))
    openai_routes.add_routes(app)
    responses_routes.add_routes(app, ResponseStore(svc.engine))
    tasks_routes.add_routes(app)
    admin.add_routes(app)
    ledger_admin.add_routes(app)
    writer_admin.add_routes(app)
    usage_routes.add_routes(app, rollup_interval_s=rollup_interval_s)
    feedback_routes.add_routes(app)
    app[usage_routes.QUEUE_DEPTH] = lambda: svc.queues.depth
    app.router.add_get("/healthz", healthz)

    async def on_startup(_app: web.Application) -> None:
        await svc.start()

    async def on_cleanup(_app: web.Application) -> None:
        await svc.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    bc = svc.config.batches
    settings = WorkerSettings(
        concurrency=bc.concurrency,
        lease_s=bc.lease_s,
        poll_s=bc.poll_s,
        default_lines_per_s=bc.default_lines_per_s,
        yielding=YieldSettings(
            concurrency=bc.yield_concurrency,
            quiet_s=bc.yield_quiet_s,
            max_lag_s=bc.yield_max_lag_ms / 1000,
        ),
    )
    batch_routes.add_routes(app, svc, settings)
    message_batch_routes.add_routes(app)
    video_routes.add_routes(app, svc)
    return app
