"""Key changes announced to every gateway process at once.

A key created or revoked anywhere (admin API, command line, another replica) is
announced by its id; each gateway process listens and reloads that key from the
database, so a revocation takes effect everywhere within milliseconds, not at the next
periodic refresh (which stays, as the safety net for a lost announcement).

- With Redis configured the announcement is a Redis PUBLISH on ``<prefix>keys``, sent
  after the change commits, and gateways subscribe to it.
- On PostgreSQL every change also sends a NOTIFY inside its own transaction (delivered
  when, and only if, it commits), and gateways LISTEN for it too.
- On SQLite without Redis nothing is announced: processes pick changes up at the
  periodic refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

from tokenomy.store.redis_cluster import node_url

log = logging.getLogger(__name__)

#: The PostgreSQL NOTIFY channel (one per database, so no prefix is needed).
PG_CHANNEL = "tokenomy_keys"

#: Announces that the key with this id changed (called after the change committed).
Announce = Callable[[str], None]
#: Reloads one key by id, or (None) every key changed lately: after a (re)connection,
#: when announcements may have been missed.
Reload = Callable[[str | None], Awaitable[None]]

_MAX_BACKOFF_S = 5.0


def redis_channel(prefix: str) -> str:
    """Pub/sub channels ignore the database number: the prefix keeps deployments apart."""
    return prefix + "keys"


class RedisAnnouncer:
    """Publishes key changes on Redis (blocking: the key store runs in threads)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url, self._channel = url, redis_channel(prefix)
        self._client: Any = None

    def __call__(self, key_id: str) -> None:
        if self._client is None:
            import redis

            # A cluster broadcasts what one node publishes: the seed node will do.
            self._client = redis.Redis.from_url(
                node_url(self._url), socket_timeout=2.0, socket_connect_timeout=2.0
            )
        self._client.publish(self._channel, key_id)


def pg_dsn(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL (any ``postgresql+driver``)."""
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


async def listen(redis_url: str, prefix: str, db_url: str, reload: Reload) -> None:
    """Follow key announcements for as long as the task runs; reconnects with backoff.

    Both channels when both exist: a change made by a command run without the Redis
    setting still arrives by PostgreSQL. Returns at once when there is nothing to listen
    to (SQLite without Redis).
    """
    follow = []
    if redis_url:
        follow.append(_forever(lambda: _redis_once(redis_url, redis_channel(prefix), reload),
                               "Redis"))  # fmt: skip
    if make_url(db_url).get_backend_name() == "postgresql":
        follow.append(_forever(lambda: _postgres_once(pg_dsn(db_url), reload), "PostgreSQL"))
    if follow:
        await asyncio.gather(*follow)


async def _forever(once: Callable[[], Awaitable[None]], what: str) -> None:
    delay = 0.1
    while True:
        try:
            await once()
            delay = 0.1
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("key announcements from %s lost (%s); reconnecting in %.1f s",
                        what, e, delay)  # fmt: skip
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF_S)


async def _redis_once(url: str, channel: str, reload: Reload) -> None:
    import redis.asyncio as aioredis

    # The health check notices a connection that died silently between messages.
    client = aioredis.Redis.from_url(node_url(url), health_check_interval=15)
    try:
        async with client.pubsub() as ps:
            await ps.subscribe(channel)
            await reload(None)  # what changed before the subscription took
            async for msg in ps.listen():
                if msg.get("type") == "message":
                    data = msg["data"]
                    await reload(data.decode() if isinstance(data, bytes) else str(data))
    finally:
        await client.aclose()


async def _postgres_once(dsn: str, reload: Reload) -> None:
    import psycopg

    # Keepalives notice a connection that died silently while waiting for notifications.
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, keepalives=1, keepalives_idle=30, keepalives_interval=10,
        keepalives_count=3,
    )  # fmt: skip
    async with conn:
        await conn.execute(f"LISTEN {PG_CHANNEL}")
        await reload(None)
        async for note in conn.notifies():
            await reload(note.payload)
