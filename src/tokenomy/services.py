"""The services a running gateway is made of, built once at start and handed down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, Table

from tokenomy.admission.fairqueue import QueueBoard
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStage,
    Scope,
)
from tokenomy.analytics.metrics import Metrics
from tokenomy.analytics.metrics_share import DIR_ENV as METRICS_DIR_ENV
from tokenomy.analytics.metrics_share import SharedMetrics
from tokenomy.billing.call_pricing import CallPricer
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable
from tokenomy.billing.pricing import openrouter_pricing
from tokenomy.config import Config, LimitsConfig
from tokenomy.core.call import Call, Stage
from tokenomy.core.registry import ModelRoute, Registry
from tokenomy.core.tokencount import TokenCounter
from tokenomy.gateway.candidates import Candidates
from tokenomy.gateway.pipeline import Pipeline
from tokenomy.gateway.price_check import check_served_prices
from tokenomy.gateway.records import EXTRA_ROWS, usage_row
from tokenomy.gateway.registry import build_registry
from tokenomy.ledger.account_cache import AccountCache
from tokenomy.ledger.admin_feed import AdminTotalsFeed, AdminTotalsReader
from tokenomy.ledger.live import LiveLedger, LiveStateUnavailable, MemoryLedger
from tokenomy.ledger.records import ledger_rows
from tokenomy.ledger.stage import LEDGER, LedgerStage
from tokenomy.ledger.store import LedgerStore
from tokenomy.ledger.tasks import TaskFinder
from tokenomy.providers.base import Provider
from tokenomy.providers.factory import build_providers
from tokenomy.routing.affinity import (
    EXPIRED_GRACE_S,
    AffinityMap,
    AffinityStage,
    MemoryAffinity,
)
from tokenomy.routing.auto import AutoRouter
from tokenomy.routing.health import BreakerPolicy, HealthBoard
from tokenomy.routing.learned import LearnedRouter
from tokenomy.routing.power import Region
from tokenomy.routing.preferences import parse_preferences
from tokenomy.routing.router import Router
from tokenomy.store import key_events
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyCache, KeyStore
from tokenomy.store.redis_affinity import RedisAffinity
from tokenomy.store.redis_cluster import is_cluster_url, node_url, slot_of, slot_prefix
from tokenomy.store.schema import usage_events
from tokenomy.store.tasks import TaskStore
from tokenomy.store.writer import BatchWriter
from tokenomy.tracing import build_tracer_provider

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tokenomy.store.redis_scripts import ScriptClient

log = logging.getLogger(__name__)

#: How often a gateway re-reads keys created or revoked elsewhere: the safety net under
#: the announcements (``store.key_events``) that apply them at once.
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
    accounts: AccountCache
    live: LiveLedger
    pricer: CallPricer
    ledger_stage: LedgerStage
    router: Router
    queues: QueueBoard
    limiter: RateLimiter
    metrics: Metrics
    tracer_provider: Any | None = None
    #: The read-only credential for /metrics, besides the admin key.
    metrics_token: str | None = None
    #: Under ``serve --workers N``: this worker's metrics shared with the others.
    shared_metrics: SharedMetrics | None = None
    #: The process's one redis-py client, when live state is in Redis.
    redis: Any | None = None
    #: Tasks made through ``POST /v1/tasks``, and their totals.
    tasks: TaskStore | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Sends the live ledger only the admin totals that changed (see refresh_accounts).
    _admin_feed: AdminTotalsFeed | None = None
    _admin_reader: AdminTotalsReader | None = None

    def model_pricing(self, route: ModelRoute) -> dict[str, str] | None:
        """OpenRouter-style USD-per-token prices of a model's first priced deployment."""
        now = datetime.now(UTC)
        for dep in route.deployments:
            v = self.pricer.version(dep, now)
            if v is not None:
                return openrouter_pricing(v, at=now, fx=self.pricer.fx)
        return None

    async def start(self) -> None:
        if self.redis is not None and not is_cluster_url(self.config.ledger.redis_url):
            from tokenomy.store.redis_check import ensure_single_redis

            await ensure_single_redis(self.redis, "TOKENOMY_REDIS_URL (ledger.redis_url)")
        await asyncio.to_thread(migrate, self.engine)
        await asyncio.to_thread(self.key_cache.refresh)
        await self.refresh_accounts()
        self.usage_writer.start()
        self._tasks.append(asyncio.create_task(self._refresh_keys(), name="key-refresh"))
        self._tasks.append(asyncio.create_task(self._follow_keys(), name="key-events"))
        if self.shared_metrics is not None:
            self._tasks.append(asyncio.create_task(self.shared_metrics.run(), name="metrics"))
        self._tasks.append(asyncio.create_task(self._refresh_ledger(), name="ledger-refresh"))

    async def stop(self) -> None:
        """Drain the writer and close upstream clients (runs on SIGTERM too)."""
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.shared_metrics is not None:
            self.shared_metrics.close()
        await self.usage_writer.close()
        for p in self.providers.values():
            await p.close()
        # The limiter first: the ledger's close also closes the Redis client they share.
        await self.limiter.aclose()
        await self.live.close()
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)  # flushes spans
        self.engine.dispose()

    async def refresh_accounts(self) -> None:
        """Pick up orgs, budgets and top-ups made elsewhere (CLI, admin API, replicas)."""
        await asyncio.to_thread(self.accounts.refresh)
        if self._admin_feed is None or self._admin_reader is None:
            self._admin_reader = AdminTotalsReader(self.ledger)
            self._admin_feed = AdminTotalsFeed(self.live, on_change=self.ledger_stage.broke.forget)
        totals, everyone = await asyncio.to_thread(self._admin_reader.read)
        if everyone:
            await self._admin_feed.push_all(self.accounts.orgs, totals)
        else:
            await self._admin_feed.push_changed(totals)

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            try:
                await asyncio.to_thread(self.key_cache.refresh)
            except Exception:
                log.exception("refreshing API keys failed; keeping the cached ones")

    async def _follow_keys(self) -> None:
        async def reload(key_id: str | None) -> None:
            if key_id is None:
                await asyncio.to_thread(self.key_cache.refresh)
            else:
                await asyncio.to_thread(self.key_cache.reload, key_id)

        lc = self.config.ledger
        await key_events.listen(lc.redis_url, lc.redis_prefix, self.config.database.url, reload)

    async def _refresh_ledger(self) -> None:
        while True:
            await asyncio.sleep(self.config.ledger.refresh_s)
            try:
                await self.refresh_accounts()
                await self.live.expire()
            except LiveStateUnavailable:
                pass  # Redis unreachable: logged once by the ledger, retried next time
            except Exception:
                log.exception("refreshing accounts failed; keeping the cached ones")


def key_store(engine: Engine, config: Config) -> KeyStore:
    """The key store, announcing its changes on Redis when there is one."""
    lc = config.ledger
    announce = key_events.RedisAnnouncer(lc.redis_url, lc.redis_prefix) if lc.redis_url else None
    return KeyStore(engine, announce)


def build_scripts(config: Config) -> ScriptClient | None:
    """The request path's Redis script client, one for the rate limiter and the ledger:
    the settlements of both leave in one write and their replies come back in one read."""
    if not config.ledger.redis_url:
        return None
    from tokenomy.store.redis_scripts import ScriptClient

    url = config.ledger.redis_url
    scripts = ScriptClient.for_url(url, slot=slot_of(redis_prefix(config)))
    if scripts is None:
        log.warning("Redis over a Unix socket: scripts go through redis-py (slower)")
    return scripts


def build_redis(config: Config) -> Redis | None:
    """The process's one redis-py client (meters loaded, admin reads, scripts the lean
    client does not serve), shared by the ledger and the rate limiter."""
    url = config.ledger.redis_url
    if not url:
        return None
    from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

    if is_cluster_url(url):
        # Typed as Redis: the commands used on it (hashes, one-slot transactions, scripts)
        # are the same on both, and a cluster client routes each by its key.
        return cast("Redis", RedisCluster.from_url(node_url(url)))
    # Blocking: under load callers wait for a connection instead of failing open.
    pool = BlockingConnectionPool.from_url(url, max_connections=64)
    return Redis(connection_pool=pool)


def redis_prefix(config: Config) -> str:
    """The prefix of every key: on a Redis Cluster a hash tag, so that they share a slot."""
    prefix = config.ledger.redis_prefix
    return slot_prefix(prefix) if is_cluster_url(config.ledger.redis_url) else prefix


def build_live(
    config: Config,
    store: LedgerStore,
    scripts: ScriptClient | None = None,
    redis: Redis | None = None,
) -> LiveLedger:
    if config.ledger.redis_url:
        from tokenomy.ledger.redis_live import RedisLedger

        client = redis if redis is not None else build_redis(config)
        assert client is not None
        exact = RedisLedger(client, store, redis_prefix(config), scripts=scripts)
        if config.ledger.lease_share > 0:
            from tokenomy.ledger.leased import LeasedLedger

            flush_s = config.ledger.lease_flush_ms / 1000
            # A lease is a hold: a killed process's reserve is released no later than
            # its requests' holds are.
            ttl_s = min(60.0, config.ledger.hold_ttl_s)
            return LeasedLedger(
                exact, share=config.ledger.lease_share, flush_s=flush_s, lease_ttl_s=ttl_s
            )
        return exact
    return MemoryLedger(store)


def build_limiter(
    config: Config, scripts: ScriptClient | None = None, redis: Redis | None = None
) -> RateLimiter:
    if config.ledger.redis_url:
        # Imported only with Redis: the client library is some 9 MB a process without it.
        from tokenomy.admission.redis_limiter import LeasedRateLimiter, RedisRateLimiter

        client = redis if redis is not None else build_redis(config)
        assert client is not None
        prefix = redis_prefix(config) + "rl:"
        share = config.limits.lease_share
        if share > 0:
            return LeasedRateLimiter(client, prefix, share=share, scripts=scripts)
        return RedisRateLimiter(client, prefix, scripts=scripts)
    return MemoryRateLimiter()


def _limits(c: LimitsConfig | None) -> Limits | None:
    if c is None or (c.requests_per_minute, c.tokens_per_minute, c.concurrent) == (None,) * 3:
        return None
    return Limits(c.requests_per_minute, c.tokens_per_minute, c.concurrent)


def rate_limit_stage(config: Config, limiter: RateLimiter, pricer: CallPricer) -> RateLimitStage:
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
        return pricer.prompt_estimate(call) + call.max_output_tokens(default_out)

    return RateLimitStage(limiter, scopes, estimate)


def affinity_stage(config: Config, pricer: CallPricer, redis: Redis | None) -> AffinityStage:
    """Cache affinity over the process's memory, or Redis when replicas share state."""
    store: AffinityMap = (
        RedisAffinity(redis, redis_prefix(config), grace_s=EXPIRED_GRACE_S)
        if redis is not None
        else MemoryAffinity()
    )
    return AffinityStage(store, pricer.prompt_bound, default_ttl_s=config.routing.affinity_ttl_s)


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
    keys = key_store(engine, config)
    registry = build_registry(config, env)
    providers = build_providers(registry, config.server)
    counter = TokenCounter()
    ledger = LedgerStore(engine)
    accounts = AccountCache(ledger)
    scripts = build_scripts(config)
    redis = build_redis(config)
    live = build_live(config, ledger, scripts, redis)
    # Redis-backed live ledgers keep the usage Redis counted until the writer commits
    # it: a rebuild after a loss adds what the database does not have yet.
    watch = getattr(live, "watch_commits", None)
    writer = BatchWriter(
        engine,
        usage_events,
        flush_interval_ms=config.writer.flush_interval_ms,
        batch_max=config.writer.batch_max,
        on_flushed=watch() if watch is not None else None,
    )
    pricer = CallPricer(
        PriceBook.load(config.prices),
        FxTable.load(config.fx),
        image_tokens=config.ledger.image_tokens,
    )
    check_served_prices(config, registry, pricer.prices)  # nothing served for free

    metrics = Metrics()
    shared_dir = env.get(METRICS_DIR_ENV)
    shared = SharedMetrics(metrics, Path(shared_dir)) if shared_dir else None

    def record(call: Call) -> None:
        ledger = call.get(LEDGER)
        charge = ledger.charge if ledger is not None else None
        row = usage_row(call, charge)
        # Its roll-up marker is made by the database when the event is inserted.
        rows: list[tuple[Table, dict[str, Any]]] = [(usage_events, row)]
        if charge is not None:
            rows += ledger_rows(call, ledger.org if ledger is not None else None, charge)
        extra = call.get(EXTRA_ROWS)
        if extra is not None:  # a batch line's result: committed with its usage record
            rows += extra
        writer.submit_many(rows)
        metrics.observe(row)

    rc = config.routing
    health = HealthBoard(
        policy=BreakerPolicy(
            consecutive_failures=rc.breaker_failures, cooldown_s=rc.breaker_cooldown_s
        )
    )
    _, default_prefs = parse_preferences(rc.default or None, "default")
    router = Router(
        pricer,
        health,
        default_prefs,
        default_max_output=config.server.default_max_output_tokens,
        regions={
            n: Region(n, r.usd_per_kwh, r.kwh_per_m_tokens, r.pue)
            for n, r in config.regions.items()
        },
        rtt_s={n: r.rtt_ms / 1000 for n, r in config.regions.items()},
        spread=rc.spread_equal,
    )
    candidates = Candidates(router)
    limiter = build_limiter(config, scripts, redis)
    tasks = TaskStore(engine)
    stage = LedgerStage(
        pricer,
        live,
        accounts,
        counter,
        candidates,
        TaskFinder(tasks),
        hold_ttl_s=config.ledger.hold_ttl_s,
        default_max_output=config.server.default_max_output_tokens,
        can_be_free=lambda at: pricer.any_free(
            (d for r in registry.routes for d in r.deployments), at
        ),
    )
    stages: tuple[Stage, ...] = (rate_limit_stage(config, limiter, pricer), stage)
    if rc.affinity:  # before the hold, which asks for the ranked deployments
        stages = (stages[0], affinity_stage(config, pricer, redis), stage)
    provider = build_tracer_provider(config.tracing, env)
    pipeline = Pipeline(
        registry,
        providers,
        counter,
        record,
        config.server,
        stages=stages,
        candidates=candidates,
        router=router,
        queues=QueueBoard(max_wait_s=rc.max_queue_wait_s),
        quoter=stage,
        auto=build_auto(config, registry),
        tracer=provider.get_tracer("tokenomy") if provider is not None else None,
    )
    return Services(
        config=config,
        engine=engine,
        keys=keys,
        key_cache=KeyCache(keys),
        registry=registry,
        providers=providers,
        counter=counter,
        usage_writer=writer,
        tasks=tasks,
        pipeline=pipeline,
        admin_key=env.get(config.admin.key_env) or None,
        metrics_token=env.get(config.admin.metrics_token_env) or None,
        ledger=ledger,
        accounts=accounts,
        live=live,
        pricer=pricer,
        ledger_stage=stage,
        router=router,
        queues=pipeline.queues,
        limiter=limiter,
        metrics=metrics,
        shared_metrics=shared,
        tracer_provider=provider,
        redis=redis,
    )
