"""The cache-affinity map in Redis, shared by the gateway's replicas.

One key per affinity key under the gateway's prefix (so in its one hash slot on a
cluster), holding ``"<deployment id> <warm until>"`` and expiring ``grace_s`` after the
cache does (until then a call is told its cache "expired" rather than "miss"). One GET before
routing, one SET after a call is served; a Redis failure routes without affinity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class RedisAffinity:
    """The map in Redis, shared by replicas: one GET before routing, one SET after."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        grace_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix + "af:"
        self.grace_s = grace_s
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
        keep_ms = max(1, int((warm_until - self.clock() + self.grace_s) * 1000))
        try:
            await self.client.set(
                self.prefix + key, f"{deployment_id} {warm_until:.3f}", px=keep_ms
            )
        except Exception as e:
            log.warning("cache affinity: Redis write failed (%s)", e)
