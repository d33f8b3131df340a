"""What the gateway checks of its Redis before serving."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rx


class RedisClusterUnsupported(RuntimeError):
    """The configured Redis is a Redis Cluster node, named as a single Redis."""


async def ensure_single_redis(client: Any, where: str) -> None:
    """Refuse a Redis Cluster node named by a plain redis:// URL: its keys would not share
    a slot (see store.redis_cluster) and requests would fail one by one with MOVED or
    CROSSSLOT errors."""
    try:
        info = await client.info("cluster")
    except rx.ResponseError:
        return  # INFO renamed or denied (some managed services): nothing to tell from it
    except rx.RedisError:
        return  # unreachable now: what happens then is the outage handling's business
    if str(info.get("cluster_enabled", 0)) == "1":
        raise RedisClusterUnsupported(
            f"{where} is a Redis Cluster node: name the cluster as such, with "
            "redis+cluster:// (or rediss+cluster://) instead of redis://"
        )
