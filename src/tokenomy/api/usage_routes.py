"""Usage analytics over HTTP: ``GET /v1/usage``, ``GET /metrics`` and ``/dashboard``.

A key sees its own usage; the admin key sees everyone's (and may filter by ``org_id`` or
``key_id``). Every read first rolls up whatever the writer has committed, so a client
sees its own requests as soon as they are durable.

Signing in to the dashboard (a form POST, never a link) trades the key for a session
cookie: who it is for ("admin" or a key id) and when it expires, signed with HMAC-SHA256.
The raw key never reaches the browser's cookie jar, and a key's session ends on the next
request after it is revoked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from aiohttp import web

from tokenomy.analytics import dashboard
from tokenomy.analytics.buckets import DAY, HOUR
from tokenomy.analytics.metrics import Metrics
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.analytics.rollup import Rollups, RollupWorker
from tokenomy.analytics.video_panel import video_queue_charts, video_queue_history
from tokenomy.analytics.views import ViewError, parse_window, run_view
from tokenomy.api.admin import require_admin
from tokenomy.api.edge import SERVICES, authenticate, presented_key, services
from tokenomy.core.errors import InvalidRequest, Unauthorized
from tokenomy.services import Services

ROLLUPS: web.AppKey[Rollups] = web.AppKey("analytics.rollups", Rollups)
METRICS: web.AppKey[Metrics] = web.AppKey("analytics.metrics", Metrics)
#: How many requests wait in the admission queue now (set by whoever owns the queue).
QUEUE_DEPTH: web.AppKey[Callable[[], int]] = web.AppKey("analytics.queue_depth")
_WORKER: web.AppKey[RollupWorker] = web.AppKey("analytics.worker", RollupWorker)
_SESSION_SECRET: web.AppKey[bytes] = web.AppKey("analytics.session_secret", bytes)
COOKIE = "tokenomy_dashboard"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: How long a dashboard sign-in lasts.
SESSION_TTL_S: Final = 12 * 3600
ADMIN_SUBJECT: Final = "admin"
_KEY_SUBJECT: Final = "key:"


@dataclass(frozen=True, slots=True)
class Viewer:
    admin: bool
    scope: Scope


def _same_secret(expected: str | None, given: str) -> bool:
    """``given`` is ``expected`` (compared in constant time); never when none is set."""
    return bool(expected) and secrets.compare_digest(
        given.encode("utf-8", "surrogatepass"), (expected or "").encode()
    )


def _is_admin(svc: Services, secret: str) -> bool:
    return _same_secret(svc.admin_key, secret)


def _viewer_for(svc: Services, secret: str | None) -> Viewer | None:
    if not secret:
        return None
    if _is_admin(svc, secret):
        return Viewer(True, EVERYONE)
    key = svc.key_cache.lookup(secret)
    return Viewer(False, Scope(key_id=key.id)) if key is not None else None


# ---- dashboard sessions -----------------------------------------------------------------


def session_secret(admin_key: str | None) -> bytes:
    """The key that signs dashboard sessions. Derived from the admin key when there is
    one, so replicas accept each other's sessions and a new admin key ends them all;
    otherwise random, so sessions end when the process does."""
    if admin_key:
        label = b"tokenomy dashboard session v1"
        return hmac.new(admin_key.encode(), label, hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue_session(secret: bytes, subject: str, now_s: float, ttl_s: int = SESSION_TTL_S) -> str:
    """A session token for ``subject`` ("admin" or "key:<id>") valid for ``ttl_s``."""
    if "." in subject:
        raise ValueError("a session subject cannot contain '.'")
    payload = f"{subject}.{int(now_s) + ttl_s}"
    return f"{payload}.{_sign(secret, payload)}"


def read_session(secret: bytes, token: str, now_s: float) -> str | None:
    """The subject of a correctly signed, unexpired session token, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    subject, expires, sig = parts
    good = _sign(secret, f"{subject}.{expires}")
    if not hmac.compare_digest(sig.encode(), good.encode()):
        return None
    if not expires.isdigit() or int(expires) <= now_s:
        return None
    return subject


def _subject_for(svc: Services, secret: str) -> str | None:
    """Whom a presented key signs in as, or None when it is not accepted."""
    viewer = _viewer_for(svc, secret)
    if viewer is None:
        return None
    return ADMIN_SUBJECT if viewer.admin else _KEY_SUBJECT + str(viewer.scope.key_id)


async def _session_viewer(request: web.Request, token: str) -> Viewer | None:
    svc = services(request)
    subject = read_session(request.app[_SESSION_SECRET], token, time.time())
    if subject == ADMIN_SUBJECT and svc.admin_key:
        return Viewer(True, EVERYONE)
    if subject is not None and subject.startswith(_KEY_SUBJECT):
        key_id = subject.removeprefix(_KEY_SUBJECT)
        # The database, not the key cache: a key revoked on another replica (or by the
        # command line) must end its sessions now, not at the next cache refresh.
        if await asyncio.to_thread(svc.keys.is_active, key_id):
            return Viewer(False, Scope(key_id=key_id))
    return None


def _api_viewer(request: web.Request) -> Viewer:
    svc = services(request)
    secret = presented_key(request.headers)
    if secret and _is_admin(svc, secret):
        require_admin(request)
        org, key = request.query.get("org_id"), request.query.get("key_id")
        return Viewer(True, Scope(key_id=key or None, org_id=org or None))
    key_rec = authenticate(request.headers, svc)
    return Viewer(False, Scope(key_id=key_rec.id))


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


async def _fresh(request: web.Request) -> Rollups:
    rollups = request.app[ROLLUPS]
    await asyncio.to_thread(rollups.refresh)
    return rollups


async def get_usage(request: web.Request) -> web.Response:
    viewer = _api_viewer(request)
    svc = services(request)
    rollups = await _fresh(request)
    params = dict(request.query)
    try:
        out = await asyncio.to_thread(
            run_view,
            rollups.engine,
            params,
            book=svc.pricer.prices,
            fx=svc.pricer.fx,
            scope=viewer.scope,
        )
    except ViewError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    out["scope"] = "all" if viewer.admin and viewer.scope == EVERYONE else "filtered"
    if not viewer.admin:
        out["scope"] = "key"
    return _json(out)


def _may_scrape(svc: Services, secret: str | None) -> bool:
    if svc.config.admin.public_metrics:
        return True
    if not secret:
        return False
    return _is_admin(svc, secret) or _same_secret(svc.metrics_token, secret)


async def get_metrics(request: web.Request) -> web.Response:
    svc = services(request)
    if not _may_scrape(svc, presented_key(request.headers)):
        raise Unauthorized(
            "Metrics need the metrics token or the admin key as 'Authorization: Bearer "
            "<token>' (or set admin.public_metrics: true)."
        )
    text = request.app[METRICS].render()
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_TEXT})


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _with_cookie(resp: web.StreamResponse, request: web.Request, subject: str) -> None:
    token = issue_session(request.app[_SESSION_SECRET], subject, time.time())
    resp.set_cookie(
        COOKIE,
        token,
        path="/dashboard",
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


async def _dashboard_viewer(request: web.Request) -> Viewer | None:
    """The session cookie's viewer, else the key in the request's headers (scripts)."""
    token = request.cookies.get(COOKIE)
    if token:
        viewer = await _session_viewer(request, token)
        if viewer is not None:
            return viewer
    return _viewer_for(services(request), presented_key(request.headers))


async def get_dashboard(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    # A ``key`` in the query never signs in: sign-in is a POST (a link would put the key
    # in the request line and let another site sign a browser in to its account).
    viewer = await _dashboard_viewer(request)
    if viewer is None:  # nothing (or nothing valid) presented: the sign-in form
        after = _view_query(request.query)
        if request.cookies.get(COOKIE):
            page = _html(dashboard.login_page("Your session has ended; sign in again.", after),
                         401)  # fmt: skip
            page.del_cookie(COOKIE, path="/dashboard")
            return page
        bad = bool(presented_key(request.headers))
        return _html(dashboard.login_page("That key was not accepted." if bad else "", after),
                     401 if bad else 200)  # fmt: skip
    try:
        window = parse_window(request.query)
    except ViewError as e:
        raise InvalidRequest(str(e), param=e.param) from None
    rollups = await _fresh(request)
    names = await asyncio.to_thread(_names, svc) if viewer.admin else {}
    view = await asyncio.to_thread(
        dashboard.collect,
        rollups.engine,
        window.start_ms,
        window.end_ms,
        book=svc.pricer.prices,
        fx=svc.pricer.fx,
        scope=viewer.scope,
        names=names,
    )
    depth = _queue_depth(request)
    extra = []
    if svc.config.videos.models:  # the video queue's panel, where videos are served
        size = HOUR if view.hourly else DAY
        hist = await asyncio.to_thread(
            video_queue_history, svc.engine, view.buckets, size, viewer.scope
        )
        body = video_queue_charts(hist, view.buckets, view.hourly)
        extra.append(("Video queue: jobs waiting and wait percentiles", body, "video-queue"))
    return _html(dashboard.render(view, queue_depth=depth, admin=viewer.admin, extra=extra))


def _names(svc: Services) -> dict[str, str]:
    names = {k.id: k.name or k.prefix for k in svc.keys.all(include_revoked=True)}
    names.update({o.id: o.name for o in svc.ledger.all_orgs()})
    return names


def _queue_depth(request: web.Request) -> int:
    read = request.app.get(QUEUE_DEPTH)
    return int(read()) if read is not None else 0


def _view_query(params: Mapping[str, str]) -> str:
    """The dashboard view's parameters, to come back to after signing in (never a key)."""
    return urlencode([(k, v) for k, v in params.items() if k != "key"])


def _cross_site(request: web.Request) -> bool:
    """Whether a browser sent this from another site's page (login CSRF)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


async def post_login(request: web.Request) -> web.StreamResponse:
    if _cross_site(request):
        return _html(dashboard.login_page("Sign in from this site's own page."), 403)
    form = await request.post()
    secret = str(form.get("key") or "").strip()
    subject = _subject_for(services(request), secret) if secret else None
    after = _view_query(dict(parse_qsl(str(form.get("next") or ""))))
    if subject is None:
        return _html(dashboard.login_page("That key was not accepted.", after), 401)
    # Only the query comes from the form: the redirect never leaves /dashboard.
    resp = web.HTTPSeeOther("/dashboard" + ("?" + after if after else ""))
    _with_cookie(resp, request, subject)
    raise resp


async def get_logout(request: web.Request) -> web.StreamResponse:
    resp = web.HTTPSeeOther("/dashboard")
    resp.del_cookie(COOKIE, path="/dashboard")
    raise resp


async def get_live(request: web.Request) -> web.Response:
    if await _dashboard_viewer(request) is None:
        raise Unauthorized("Sign in to the dashboard first.")
    svc = services(request)
    return _json({"queue_depth": _queue_depth(request), "writer_pending": svc.usage_writer.pending})


def _register_gauges(app: web.Application, metrics: Metrics, svc: Services) -> None:
    metrics.gauge("tokenomy_queue_depth", "Requests waiting in the admission queue.",
                  lambda: _depth_of(app))  # fmt: skip
    metrics.gauge("tokenomy_writer_pending_rows", "Rows queued for the durable writer.",
                  lambda: svc.usage_writer.pending)  # fmt: skip
    metrics.gauge("tokenomy_writer_failures_total", "Failed group commits (retried).",
                  lambda: svc.usage_writer.failures, kind="counter")  # fmt: skip
    metrics.gauge("tokenomy_writer_dead_letters_total",
                  "Records the database refused, kept in writer_dead_letters.",
                  lambda: svc.usage_writer.dead_letters, kind="counter")  # fmt: skip
    stage = svc.ledger_stage
    metrics.gauge("tokenomy_ledger_holds_total", "Funds held before vendor calls.",
                  lambda: stage.holds, kind="counter")  # fmt: skip
    metrics.gauge("tokenomy_ledger_settles_total", "Holds settled at the actual cost.",
                  lambda: stage.settles, kind="counter")  # fmt: skip
    metrics.gauge("tokenomy_ledger_refusals_total", "Requests refused for lack of funds.",
                  lambda: stage.refusals, kind="counter")  # fmt: skip
    metrics.gauge("tokenomy_ledger_head_refusals_total",
                  "Requests of orgs that can pay for nothing, refused before their body "
                  "was read.", lambda: stage.broke.refused, kind="counter")  # fmt: skip
    if svc.config.ledger.redis_url:  # (Redis is an optional dependency: imported only then)
        _register_lease_gauges(metrics, svc)


def _register_lease_gauges(metrics: Metrics, svc: Services) -> None:
    from tokenomy.ledger.leased import LeasedLedger
    from tokenomy.ledger.redis_live import RedisLedger

    live = svc.live
    exact = live.inner if isinstance(live, LeasedLedger) else live
    if isinstance(exact, RedisLedger):
        rec = exact.recovery
        metrics.gauge("tokenomy_ledger_redis_losses_total",
                      "Times this process found Redis had lost the live ledger state.",
                      lambda: rec.losses, kind="counter")  # fmt: skip
        metrics.gauge("tokenomy_ledger_redis_rebuilds_total",
                      "Rebuilds of the live ledger state from the database by this process.",
                      lambda: rec.rebuilds, kind="counter")  # fmt: skip
    if isinstance(live, LeasedLedger):
        metrics.gauge("tokenomy_ledger_leased_holds_total",
                      "Holds admitted from this process's lease, without a call to Redis.",
                      lambda: live.leased_holds, kind="counter")  # fmt: skip
        metrics.gauge("tokenomy_ledger_lease_syncs_total",
                      "Calls that posted leased usage to Redis and set the reserves.",
                      lambda: live.syncs, kind="counter")  # fmt: skip
        metrics.gauge("tokenomy_ledger_lease_sync_failures_total",
                      "Lease syncs that failed (their usage is posted again).",
                      lambda: live.sync_failures, kind="counter")  # fmt: skip


def _depth_of(app: web.Application) -> int:
    read = app.get(QUEUE_DEPTH)
    return int(read()) if read is not None else 0


def add_routes(app: web.Application, *, rollup_interval_s: float = 2.0) -> None:
    """Wire the analytics routes, the metrics registry and the background roll-up job.

    Call after ``app[SERVICES]`` is set. Uses ``svc.metrics`` when the services carry a
    registry (so the request path can bump it), else a registry of its own.
    """
    svc = app[SERVICES]
    rollups = Rollups.for_registry(
        svc.engine, svc.registry, writer_synchronous=svc.usage_writer.synchronous
    )
    app[ROLLUPS] = rollups
    app[_SESSION_SECRET] = session_secret(svc.admin_key)
    metrics = getattr(svc, "metrics", None)
    if not isinstance(metrics, Metrics):
        metrics = Metrics()
    app[METRICS] = metrics
    _register_gauges(app, metrics, svc)
    app.router.add_get("/v1/usage", get_usage)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/dashboard", get_dashboard)
    app.router.add_post("/dashboard/login", post_login)
    app.router.add_get("/dashboard/logout", get_logout)
    app.router.add_get("/dashboard/live", get_live)
    worker = RollupWorker(rollups, rollup_interval_s)
    app[_WORKER] = worker

    async def start(_app: web.Application) -> None:
        worker.start()

    async def stop(_app: web.Application) -> None:
        await worker.stop()

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)
