"""The services a running gateway is made of, built once at start and handed down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table

from tokenomy.admission.fairqueue import QueueBoard
from tokenomy.admission.leases import LeasedRateLimiter
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStage,
    RedisRateLimiter,
    Scope,
)
from tokenomy.analytics.metrics import Metrics
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable
from tokenomy.billing.pricing import openrouter_pricing
from tokenomy.config import Config, LimitsConfig
from tokenomy.gateway.call import Call
from tokenomy.gateway.pipeline import Pipeline
from tokenomy.gateway.records import usage_row
from tokenomy.gateway.registry import ModelRoute, Registry, build_registry
from tokenomy.gateway.tokencount import TokenCounter
from tokenomy.ledger.biller import Biller
from tokenomy.ledger.directory import Directory
from tokenomy.ledger.live import LiveLedger, MemoryLedger
from tokenomy.ledger.records import ledger_rows
from tokenomy.ledger.stage import CHARGE, ORG, LedgerStage
from tokenomy.ledger.store import LedgerStore
from tokenomy.providers.base import Provider
from tokenomy.providers.factory import build_providers
from tokenomy.routing.auto import AutoRouter
from tokenomy.routing.health import BreakerPolicy, HealthBoard
from tokenomy.routing.learned import LearnedRouter
from tokenomy.routing.power import Region
from tokenomy.routing.preferences import parse_preferences
from tokenomy.routing.router import Router
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyCache, KeyStore
from tokenomy.store.schema import usage_events
from tokenomy.store.writer import BatchWriter
from tokenomy.tracing import build_tracer_provider

if TYPE_CHECKING:
    from tokenomy.store.redis_scripts import ScriptClient

log = logging.getLogger(__name__)

#: How often a gateway picks up keys created or revoked elsewhere (CLI, other replicas).
KEY_REFRESH_S = 2.0


@dataclass
class Services:
    config: Config
    engine: Engine
    keys: KeyStore
    key_cache: KeyCache
    registry: Registry
    providers: Mapping[str, Provider]
    counter: TokenCounter
    usage_writer: BatchWriter
    pipeline: Pipeline
    admin_key: str | None
    ledger: LedgerStore
    directory: Directory
    live: LiveLedger
    biller: Biller
    ledger_stage: LedgerStage
    router: Router
    queues: QueueBoard
    limiter: RateLimiter
    metrics: Metrics
    tracer_provider: Any | None = None
    #: The read-only credential for /metrics, besides the admin key.
    metrics_token: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def model_pricing(self, route: ModelRoute) -> dict[str, str] | None:
        """OpenRouter-style USD-per-token prices of a model's first priced deployment."""
        now = datetime.now(UTC)
        for dep in route.deployments:
            v = self.biller.version(dep, now)
            if v is not None:
                return openrouter_pricing(v, at=now, fx=self.biller.fx)
        return None

    async def start(self) -> None:
        await asyncio.to_thread(migrate, self.engine)
        await asyncio.to_thread(self.key_cache.refresh)
        await self.refresh_accounts()
        self.usage_writer.start()
        self._tasks.append(asyncio.create_task(self._refresh_keys(), name="key-refresh"))
        self._tasks.append(asyncio.create_task(self._refresh_ledger(), name="ledger-refresh"))

    async def stop(self) -> None:
        """Drain the writer and close upstream clients (runs on SIGTERM too)."""
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.usage_writer.close()
        for p in self.providers.values():
            await p.close()
        await self.live.close()
        await self.limiter.aclose()
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)  # flushes spans
        self.engine.dispose()

    async def refresh_accounts(self) -> None:
        """Pick up orgs, budgets and top-ups made elsewhere (CLI, admin API, replicas)."""
        await asyncio.to_thread(self.directory.refresh)
        totals = await asyncio.to_thread(self.ledger.admin_totals)
        for org_id in self.directory.orgs:
            await self.live.set_admin_total(org_id, totals.get(org_id, 0))

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            try:
                await asyncio.to_thread(self.key_cache.refresh)
            except Exception:
                log.exception("refreshing API keys failed; keeping the cached ones")

    async def _refresh_ledger(self) -> None:
        while True:
            await asyncio.sleep(self.config.ledger.refresh_s)
            try:
                await self.refresh_accounts()
                await self.live.expire()
            except Exception:
                log.exception("refreshing accounts failed; keeping the cached ones")


def build_scripts(config: Config) -> ScriptClient | None:
    """The request path's Redis script client, one for the rate limiter and the ledger:
    the settlements of both leave in one write and their replies come back in one read."""
    if not config.ledger.redis_url:
        return None
    from tokenomy.store.redis_scripts import ScriptClient

    return ScriptClient.for_url(config.ledger.redis_url)


def build_live(
    config: Config, store: LedgerStore, scripts: ScriptClient | None = None
) -> LiveLedger:
    if config.ledger.redis_url:
        import redis.asyncio as aioredis

        from tokenomy.ledger.redis_live import RedisLedger

        client = aioredis.Redis.from_url(config.ledger.redis_url)
        exact = RedisLedger(client, store, config.ledger.redis_prefix, scripts=scripts)
        if config.ledger.lease_share > 0:
            from tokenomy.ledger.leased import LeasedLedger

            flush_s = config.ledger.lease_flush_ms / 1000
            return LeasedLedger(exact, share=config.ledger.lease_share, flush_s=flush_s)
        return exact
    return MemoryLedger(store)


def build_limiter(config: Config, scripts: ScriptClient | None = None) -> RateLimiter:
    if config.ledger.redis_url:
        from redis.asyncio import BlockingConnectionPool, Redis

        url = config.ledger.redis_url
        # Blocking: under load callers wait for a connection instead of failing open.
        pool = BlockingConnectionPool.from_url(url, max_connections=64)
        client, prefix = Redis(connection_pool=pool), config.ledger.redis_prefix + "rl:"
        share = config.limits.lease_share
        if share > 0:
            return LeasedRateLimiter(client, prefix, share=share, scripts=scripts)
        return RedisRateLimiter(client, prefix, scripts=scripts)
    return MemoryRateLimiter()


def _limits(c: LimitsConfig | None) -> Limits | None:
    if c is None or (c.requests_per_minute, c.tokens_per_minute, c.concurrent) == (None,) * 3:
        return None
    return Limits(c.requests_per_minute, c.tokens_per_minute, c.concurrent)


def rate_limit_stage(config: Config, limiter: RateLimiter, biller: Biller) -> RateLimitStage:
    """Limits per key, per org and per model, from the config's ``limits`` section."""
    key_l, org_l = _limits(config.limits.key), _limits(config.limits.org)
    model_l = {m: lim for m, c in config.limits.models.items() if (lim := _limits(c))}
    default_out = config.server.default_max_output_tokens

    # The same key, org and model always count against the same scopes: made once each.
    made: dict[tuple[str, str | None, str], tuple[Scope, ...]] = {}

    def scopes(call: Call) -> tuple[Scope, ...]:
        name = call.route.name if call.route is not None else call.model
        which = (call.key.id, call.key.org_id, name)
        hit = made.get(which)
        if hit is not None:
            return hit
        out = []
        if key_l is not None:
            out.append(Scope("key", call.key.id, key_l))
        if org_l is not None and call.key.org_id:
            out.append(Scope("org", call.key.org_id, org_l))
        if (m := model_l.get(name)) is not None:
            out.append(Scope("model", name, m))
        if len(made) > 65_536:  # bounded: many keys come and go
            made.clear()
        made[which] = tuple(out)
        return made[which]

    def estimate(call: Call) -> int:
        # Corrected to the actual count after the call.
        return biller.prompt_estimate(call) + call.max_output_tokens(default_out)

    return RateLimitStage(limiter, scopes, estimate)


def build_auto(config: Config, registry: Registry) -> AutoRouter | None:
    """Model "auto" when the config has a router pool (its artifact loaded once, here)."""
    rc = config.router
    if not rc.pool:
        return None
    learned = LearnedRouter.load(rc.artifact or None)
    return AutoRouter(
        learned, rc.pool, registry, default_bar=rc.default_bar, fallbacks=rc.fallbacks
    )


def build_services(config: Config, env: Mapping[str, str] | None = None) -> Services:
    """Wire every service from the config; nothing touches the network until start()."""
    env = os.environ if env is None else env
    engine = open_engine(config.database.url)
    keys = KeyStore(engine)
    registry = build_registry(config, env)
    providers = build_providers(registry, config.server)
    counter = TokenCounter()
    writer = BatchWriter(
        engine,
        usage_events,
        flush_interval_ms=config.writer.flush_interval_ms,
        batch_max=config.writer.batch_max,
    )
    ledger = LedgerStore(engine)
    directory = Directory(ledger)
    scripts = build_scripts(config)
    live = build_live(config, ledger, scripts)
    biller = Biller(
        PriceBook.load(config.prices),
        FxTable.load(config.fx),
        image_tokens=config.ledger.image_tokens,
    )

    metrics = Metrics()

    def record(call: Call) -> None:
        row = usage_row(call)
        # Its roll-up marker is made by the database when the event is inserted.
        rows: list[tuple[Table, dict[str, Any]]] = [(usage_events, row)]
        charge = call.extras.get(CHARGE)
        if charge is not None:
            rows += ledger_rows(call, call.extras.get(ORG), charge)
        writer.submit_many(rows)
        metrics.observe(row)

    pipeline = Pipeline(registry, providers, counter, record, config.server)
    rc = config.routing
    health = HealthBoard(
        policy=BreakerPolicy(
            consecutive_failures=rc.breaker_failures, cooldown_s=rc.breaker_cooldown_s
        )
    )
    _, default_prefs = parse_preferences(rc.default or None, "default")
    router = Router(
        biller,
        health,
        default_prefs,
        default_max_output=config.server.default_max_output_tokens,
        regions={
            n: Region(n, r.usd_per_kwh, r.kwh_per_m_tokens, r.pue)
            for n, r in config.regions.items()
        },
        rtt_s={n: r.rtt_ms / 1000 for n, r in config.regions.items()},
    )
    queues = QueueBoard(max_wait_s=rc.max_queue_wait_s)
    pipeline.router = router
    pipeline.auto = build_auto(config, registry)
    pipeline.queues = queues
    limiter = build_limiter(config, scripts)
    pipeline.stages.append(rate_limit_stage(config, limiter, biller))
    stage = LedgerStage(
        biller,
        live,
        directory,
        counter,
        pipeline.candidates,
        hold_ttl_s=config.ledger.hold_ttl_s,
        default_max_output=config.server.default_max_output_tokens,
    )
    pipeline.stages.append(stage)
    pipeline.quoter = stage
    provider = build_tracer_provider(config.tracing, env)
    if provider is not None:
        pipeline.tracer = provider.get_tracer("tokenomy")
    return Services(
        config=config,
        engine=engine,
        keys=keys,
        key_cache=KeyCache(keys),
        registry=registry,
        providers=providers,
        counter=counter,
        usage_writer=writer,
        pipeline=pipeline,
        admin_key=env.get(config.admin.key_env) or None,
        metrics_token=env.get(config.admin.metrics_token_env) or None,
        ledger=ledger,
        directory=directory,
        live=live,
        biller=biller,
        ledger_stage=stage,
        router=router,
        queues=queues,
        limiter=limiter,
        metrics=metrics,
        tracer_provider=provider,
    )
