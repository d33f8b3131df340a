"""The services a running gateway is made of, built once at start and handed down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from tokenomy.config import Config
from tokenomy.gateway.call import Call
from tokenomy.gateway.pipeline import Pipeline
from tokenomy.gateway.records import usage_row
from tokenomy.gateway.registry import ModelRoute, Registry, build_registry
from tokenomy.gateway.tokencount import TokenCounter
from tokenomy.providers.base import Provider
from tokenomy.providers.factory import build_providers
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyCache, KeyStore
from tokenomy.store.schema import usage_events
from tokenomy.store.writer import BatchWriter

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
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def model_pricing(self, route: ModelRoute) -> dict[str, str] | None:
        """OpenRouter-style USD-per-token prices of a model's first deployment, if catalogued."""
        return None

    async def start(self) -> None:
        await asyncio.to_thread(migrate, self.engine)
        await asyncio.to_thread(self.key_cache.refresh)
        self.usage_writer.start()
        self._tasks.append(asyncio.create_task(self._refresh_keys(), name="key-refresh"))

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
        self.engine.dispose()

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            try:
                await asyncio.to_thread(self.key_cache.refresh)
            except Exception:
                log.exception("refreshing API keys failed; keeping the cached ones")


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

    def record(call: Call) -> None:
        writer.submit(usage_row(call))

    pipeline = Pipeline(registry, providers, counter, record, config.server)
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
    )
