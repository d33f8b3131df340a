"""The simulator's aiohttp app: routes, auth, error shaping and stats, and a blocking runner."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tokenomy.sim import admin, batch_api, videos
from tokenomy.sim.anthropic_api import count_tokens, messages
from tokenomy.sim.counting import Counter, default_counter
from tokenomy.sim.embeddings import embeddings
from tokenomy.sim.errors import Dialect, error_response
from tokenomy.sim.gate import MODEL, OUTCOME, Rejected
from tokenomy.sim.models import get_model, list_models
from tokenomy.sim.openai_chat import chat_completions
from tokenomy.sim.openai_legacy import completions
from tokenomy.sim.responses import responses
from tokenomy.sim.settings import SimSettings
from tokenomy.sim.state import STATE, SimState

log = logging.getLogger("tokenomy.sim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_sim_app(
    settings: SimSettings | None = None, counter: Any | None = None
) -> web.Application:
    """A simulator app; ``counter`` defaults to the gateway's ``TokenCounter`` if importable."""
    settings = settings or SimSettings()
    app = web.Application(middlewares=[_guard], client_max_size=64 * 1024 * 1024)
    counter_: Counter = counter if counter is not None else default_counter()
    app[STATE] = SimState(settings=settings, counter=counter_)
    r = app.router
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/responses", responses)
    r.add_post("/v1/embeddings", embeddings)
    r.add_post("/v1/messages", messages)
    r.add_post("/v1/messages/count_tokens", count_tokens)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model}", get_model)
    admin.add_routes(app)
    batch_api.add_routes(app)
    videos.add_routes(app)
    return app


def _dialect(request: web.Request) -> Dialect:
    anthropic = request.path.startswith("/v1/messages") or "anthropic-version" in request.headers
    return Dialect.ANTHROPIC if anthropic else Dialect.OPENAI


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the key, turn every failure into a dialect error body, and count the outcome."""
    state = request.app[STATE]
    required = state.settings.require_key
    try:
        if (
            required is not None
            and request.path.startswith("/v1/")
            and _presented_key(request) != required
        ):
            msg = "Incorrect API key provided (simulator requires a specific key)."
            raise Rejected(error_response(_dialect(request), 401, msg))
        resp = await handler(request)
    except Rejected as rejected:
        resp = rejected.response
    except web.HTTPException as exc:  # no such route or method
        resp = error_response(_dialect(request), exc.status, exc.reason)
    except Exception:
        # A simulator bug must still look like a vendor error, not a traceback page.
        log.exception("simulator failed on %s %s", request.method, request.path)
        resp = error_response(_dialect(request), 500, "Simulator internal error.")
    model = request.get(MODEL)
    if model is not None:
        state.stats.record(model, request.get(OUTCOME) or str(resp.status))
    return resp


def run_sim(host: str, port: int, settings: SimSettings) -> None:
    """Serve the simulator until SIGINT or SIGTERM; prints one line when ready."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(host, port, settings))


async def _serve(host: str, port: int, settings: SimSettings) -> None:
    runner = web.AppRunner(create_sim_app(settings), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addresses = ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses)
    print(f"tokenomy simulator ready on {addresses} (seed={settings.seed})", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
