"""The cache-affinity map in Redis, shared by the gateway's replicas.

One key per affinity key under the gateway's prefix (so in its one hash slot on a
cluster), holding ``"<deployment id> <warm until>"`` and expiring an hour after the cache
does (until then a call is told its cache "expired" rather than "miss"). One GET before
routing, one SET after a call is served; a Redis failure routes without affinity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: How long past its cache's end an entry is kept (as the in-memory map does).
EXPIRED_GRACE_S = 3600.0


class RedisAffinity:
    """The map in Redis, shared by replicas: one GET before routing, one SET after."""

    def __init__(self, client: Any, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = prefix + "af:"
        self.clock = clock

    async def get(self, key: str) -> tuple[str, float] | None:
        try:
            raw = await self.client.get(self.prefix + key)
        except Exception as e:  # affinity is an optimisation: never fail a call over it
            log.warning("cache affinity: Redis read failed (%s); routing without it", e)
            return None
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        dep, _, until = text.rpartition(" ")
        try:
            return dep, float(until)
        except ValueError:
            return None

    async def put(self, key: str, deployment_id: str, warm_until: float) -> None:
        keep_ms = max(1, int((warm_until - self.clock() + EXPIRED_GRACE_S) * 1000))
        try:
            await self.client.set(
                self.prefix + key, f"{deployment_id} {warm_until:.3f}", px=keep_ms
            )
        except Exception as e:
            log.warning("cache affinity: Redis write failed (%s)", e)
