"""What the gateway checks of its Redis before serving."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rx


class RedisClusterUnsupported(RuntimeError):
    """The configured Redis is a Redis Cluster node."""


async def ensure_single_redis(client: Any, where: str) -> None:
    """Refuse a Redis Cluster node: the ledger's and the rate limiter's scripts touch keys
    of several orgs and scopes in one call (the holds index, a lease sync of every org, a
    request's key, org and model limits), which a cluster splits across nodes. Served
    anyway, requests would fail one by one with MOVED or CROSSSLOT errors."""
    try:
        info = await client.info("cluster")
    except rx.ResponseError:
        return  # INFO renamed or denied (some managed services): nothing to tell from it
    if str(info.get("cluster_enabled", 0)) == "1":
        raise RedisClusterUnsupported(
            f"{where} is a Redis Cluster node; tokenomy needs a single Redis primary "
            "(with replicas and failover if you like), not Redis Cluster"
        )
