"""``tokenomy serve``, ``tokenomy sim`` and ``tokenomy demo``: running the servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tokenomy.analytics.metrics_share import DIR_ENV as METRICS_DIR_ENV
from tokenomy.api.lean_site import LeanSite
from tokenomy.app import app_for
from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.config import Config, ConfigError, DatabaseConfig
from tokenomy.ledger.store import Kind, LedgerStore, NotFoundError
from tokenomy.malloc_arenas import limit_arenas, release_free_memory
from tokenomy.services import build_services
from tokenomy.store.keys import KeyStore

log = logging.getLogger(__name__)

DEMO_SIM_PORT = 8001
DEMO_ORG = "org_demo"
#: How long a stopping server waits for requests in flight before cancelling them.
DRAIN_S = 10.0


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the gateway")
    add_config_arg(s)
    s.add_argument("--host", help="bind address (default: from config, 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: from config, 8000)")
    s.add_argument("--log-level", default="info")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (more than one needs Redis for live state)",
    )
    s.set_defaults(func=serve)

    sim = sub.add_parser("sim", help="run the vendor simulator (OpenAI and Anthropic dialects)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=DEMO_SIM_PORT)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    sim.add_argument("--tps", type=float, default=0.0, help="tokens per second (0: unthrottled)")
    sim.add_argument("--output-tokens", type=int, default=64, help="default answer length")
    sim.add_argument("--error-rate", type=float, default=0.0, help="share of 500 answers")
    sim.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of 429 answers")
    sim.add_argument(
        "--timeout-rate", type=float, default=0.0, help="share of requests left hanging"
    )
    sim.add_argument("--disconnect-rate", type=float, default=0.0, help="share of streams cut")
    sim.add_argument(
        "--cache-ttl-s", type=float, default=300.0, help="how long a prompt cache stays warm"
    )
    sim.add_argument(
        "--video-ms-per-second",
        type=float,
        default=200.0,
        help="render time of a simulated video, per second of output",
    )
    sim.set_defaults(func=sim_cmd)

    d = sub.add_parser("demo", help="run the gateway with the simulator, a demo database and key")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--sim-port", type=int, default=DEMO_SIM_PORT)
    d.add_argument("--dir", default=".demo", help="where the demo database lives")
    d.add_argument(
        "--history",
        type=_days,
        default=0,
        metavar="DAYS",
        help="first seed this much simulated traffic through the pipeline (e.g. 90d)",
    )
    d.set_defaults(func=demo)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    cfg = config_from(args)
    _refuse_unpriced(cfg)
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    workers = args.workers
    if workers < 1:
        fail("--workers must be at least 1")
    if workers > 1 and not cfg.ledger.redis_url:
        # Balances, holds and limits must be global: per-process memory would multiply them.
        fail("--workers above 1 needs shared live state: set TOKENOMY_REDIS_URL")
    db = cfg.database.url.split(":")[0]
    print(
        f"tokenomy gateway on http://{host}:{port}/v1 ({cfg.source}, {db}, {workers} worker"
        f"{'s' if workers > 1 else ''})",
        flush=True,
    )
    if workers == 1:
        _serve_one(cfg, host, port, reuse_port=False)
        return 0
    return _serve_many(cfg, host, port, workers)


def _refuse_unpriced(cfg: Config) -> None:
    """Refuse, before binding a port, a config that would serve a model for free."""
    from tokenomy.billing.catalog import PriceBook
    from tokenomy.gateway.price_check import check_served_prices
    from tokenomy.gateway.registry import build_registry

    try:
        check_served_prices(cfg, build_registry(cfg), PriceBook.load(cfg.prices))
    except ConfigError as e:
        fail(str(e))


def _serve_one(cfg: Any, host: str, port: int, *, reuse_port: bool) -> None:
    limit_arenas()  # before any thread starts: each would otherwise keep an arena of its own
    _install_uvloop()
    app = app_for(build_services(cfg))
    app.on_startup.append(_settle_gc)  # last: after every other start-up hook
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(app, host, port, reuse_port=reuse_port))


async def _serve_until_signal(
    app: web.Application, host: str, port: int, *, reuse_port: bool
) -> None:
    """Serve until SIGINT or SIGTERM, then wait up to 10 s for requests in flight and run
    on_cleanup, which drains the writer."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=DRAIN_S)
    await runner.setup()
    try:
        await LeanSite(runner, host, port, reuse_port=reuse_port, drain_timeout_s=DRAIN_S).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


#: Young-generation collections after this many net allocations (CPython's default: 700).
#: Fewer young collections promote fewer request-scoped objects that die a moment later.
GC_YOUNG_THRESHOLD = 5000
#: How long a background thread (the durable writer, the roll-ups) may hold the GIL
#: before the event loop gets it back, in seconds. Python's 5 ms default is a 5 ms stall
#: of every request in flight each time a group commit does Python work.
GIL_SWITCH_INTERVAL_S = 0.0005


async def _settle_gc(_app: web.Application) -> None:
    """Keep the cyclic garbage collector out of request latency.

    What start-up built (catalogue, config, routes, tokenizers) lives as long as the
    process; left in the collector's care, every full collection walked it all: pauses of
    50-80 ms that were the p99 of the gateway under load. Frozen, it is never scanned.
    What start-up freed (every key and org read) goes back to the system. Background
    threads also hand the GIL back sooner (see ``GIL_SWITCH_INTERVAL_S``).
    """
    gc.collect()
    gc.freeze()
    release_free_memory()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, mid, old)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _serve_many(cfg: Any, host: str, port: int, workers: int) -> int:
    """N processes on one port (SO_REUSEPORT: the kernel spreads connections), kept at N:
    a worker that dies is logged and replaced. They share their metrics through a
    directory of their own (``analytics.metrics_share``)."""
    import multiprocessing
    import multiprocessing.connection
    import shutil
    import tempfile
    import time

    # Migrate once here, not in N workers racing on an empty database.
    database(cfg).dispose()
    metrics_dir = tempfile.mkdtemp(prefix="tokenomy-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # inherited by the spawned workers
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> Any:
        p = ctx.Process(target=_serve_one, args=(cfg, host, port), kwargs={"reuse_port": True})
        p.start()
        return p

    procs = {slot: start() for slot in range(workers)}
    born = dict.fromkeys(procs, time.monotonic())

    signalled: set[int] = set()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)
                signalled.add(p.pid)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=1.0)
            for slot, p in list(procs.items()):
                if stopping or p.exitcode is None:
                    continue
                log.error("worker pid %s %s; starting a new one", p.pid, _ended(p.exitcode))
                if time.monotonic() - born[slot] < RESPAWN_MIN_S:
                    time.sleep(RESPAWN_MIN_S)  # dying at start-up: do not spin
                if stopping:
                    break
                procs[slot], born[slot] = start(), time.monotonic()
                log.warning("started worker pid %s in place of pid %s", procs[slot].pid, p.pid)
        for p in procs.values():  # one started as the signal came: stop it too
            if p.pid is not None and p.pid not in signalled and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs.values():
            p.join()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((p.exitcode or 0) for p in procs.values())


#: A worker that dies sooner than this after its start is restarted only this much later.
RESPAWN_MIN_S = 1.0


def _ended(exitcode: int) -> str:
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _sim_settings(args: argparse.Namespace) -> Any:
    from tokenomy.sim.settings import SimSettings

    return SimSettings(
        seed=args.seed,
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tps,
        default_output_tokens=args.output_tokens,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        timeout_rate=args.timeout_rate,
        disconnect_rate=args.disconnect_rate,
        cache_ttl_s=args.cache_ttl_s,
        video_ms_per_second=args.video_ms_per_second,
    )


def sim_cmd(args: argparse.Namespace) -> int:
    from tokenomy.sim.server import run_sim

    _install_uvloop()
    run_sim(args.host, args.port, _sim_settings(args))
    return 0


def demo(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["TOKENOMY_SIM_URL"] = f"http://127.0.0.1:{args.sim_port}/v1"
    admin_key = os.environ.setdefault("TOKENOMY_ADMIN_KEY", "tk-admin-" + secrets.token_urlsafe(12))
    args.config = os.environ.get("TOKENOMY_CONFIG")
    cfg = config_from(args)
    if not os.environ.get("TOKENOMY_DATABASE_URL"):
        url = f"sqlite:///{(workdir / 'tokenomy.db').resolve()}"
        cfg = cfg.model_copy(update={"database": DatabaseConfig(url=url)})
    secret, org_id = _demo_account(cfg)
    _install_uvloop()
    try:
        if args.history:
            asyncio.run(_seed_history(args, args.history))
        asyncio.run(_run_demo(cfg, args.port, args.sim_port, secret, admin_key, org_id))
    except OSError as e:
        fail(f"cannot start the demo: {e}")
    return 0


def _has_history(svc: Any) -> bool:
    from sqlalchemy import func, select

    from tokenomy.store.schema import usage_events

    with svc.engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(usage_events)).scalar_one())


def _days(text: str) -> int:
    value = text[:-1] if text.endswith("d") else text
    if not value.isdigit() or not 0 <= int(value) <= 3650:
        raise argparse.ArgumentTypeError(f"expected days such as 90d, not {text!r}")
    return int(value)


async def _seed_history(args: argparse.Namespace, days: int) -> None:
    """Days of traffic through the real pipeline, against an unpaced simulator.

    The demo's own simulator is paced like a real vendor (a second a call); history runs
    against a fast one on a spare port, into the same database.
    """
    import socket

    from tokenomy.cli.demo_history import seed_history
    from tokenomy.sim.server import create_sim_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    sim = web.AppRunner(create_sim_app(), access_log=None)
    await sim.setup()
    await web.TCPSite(sim, "127.0.0.1", port).start()
    os.environ["TOKENOMY_SIM_URL"] = f"http://127.0.0.1:{port}/v1"
    cfg = config_from(args)
    os.environ["TOKENOMY_SIM_URL"] = f"http://127.0.0.1:{args.sim_port}/v1"
    if not os.environ.get("TOKENOMY_DATABASE_URL"):
        url = f"sqlite:///{(Path(args.dir) / 'tokenomy.db').resolve()}"
        cfg = cfg.model_copy(update={"database": DatabaseConfig(url=url)})
    svc = build_services(cfg)
    await svc.start()
    if await asyncio.to_thread(_has_history, svc):
        print("the demo database already has history; not seeding again", flush=True)
        await svc.stop()
        await sim.cleanup()
        return
    print(f"seeding {days} days of simulated traffic through the pipeline...", flush=True)
    try:
        report = await seed_history(days, svc, calls_per_day=60)
    finally:
        await svc.stop()
        await sim.cleanup()
    print(f"seeded {report.calls} calls in {report.seconds:.0f} s", flush=True)


def _demo_account(cfg: Any) -> tuple[str, str]:
    """The demo org (prepaid, topped up once with 25 USD) and a fresh key under it."""
    engine = database(cfg)
    ledger = LedgerStore(engine)
    try:
        org = ledger.org(DEMO_ORG)
    except NotFoundError:
        org = ledger.create_org("Demo organisation", "USD", org_id=DEMO_ORG)
    ledger.post(Kind.TOPUP, org.id, 25 * 10**9, memo="demo credit", txn_id="demo-topup")
    secret, _ = KeyStore(engine).create("demo", org_id=org.id)
    engine.dispose()
    return secret, org.id


async def _run_demo(
    cfg: Any, port: int, sim_port: int, secret: str, admin_key: str, org_id: str
) -> None:
    from tokenomy.sim.server import create_sim_app
    from tokenomy.sim.settings import SimSettings

    sim_runner = web.AppRunner(create_sim_app(SimSettings(ttft_ms=150, tokens_per_second=80)))
    gw_runner = web.AppRunner(app_for(build_services(cfg)), access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", sim_port).start()
    await gw_runner.setup()
    await LeanSite(gw_runner, "127.0.0.1", port).start()
    print(_demo_banner(port, sim_port, secret, admin_key, org_id), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gw_runner.cleanup()
    await sim_runner.cleanup()


def _demo_banner(port: int, sim_port: int, secret: str, admin_key: str, org_id: str) -> str:
    base = f"http://127.0.0.1:{port}/v1"
    return f"""
tokenomy demo is running: gateway {base}, simulated vendors on 127.0.0.1:{sim_port}
(the simulator stands in for vendors without a key; its answers start with "[simulated]")

  API key:   {secret}   (org {org_id}, prepaid, 25 USD of demo credit)
  admin key: {admin_key}

  curl {base}/chat/completions \\
    -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
    -d '{{"model": "deepseek-chat", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI
c = OpenAI(base_url="{base}", api_key="{secret}")
r = c.chat.completions.create(model="sim-small", messages=[{{"role": "user", "content": "Hi"}}])
print(r.choices[0].message.content)'

  models and prices: curl -s {base}/models -H "Authorization: Bearer {secret}"
  what a request cost: the x-tokenomy-cost header and usage.cost in the response
  dashboard: http://127.0.0.1:{port}/dashboard (sign in with the admin key, or the API key)
  usage:     curl -s "{base}/usage?view=summary" -H "Authorization: Bearer {admin_key}"
  metrics:   curl -s http://127.0.0.1:{port}/metrics -H "Authorization: Bearer {admin_key}"
Press Ctrl-C to stop.
"""
