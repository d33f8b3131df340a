"""Redis Cluster: which URLs name one, and the hash slot every key of tokenomy shares.

Every script call must touch one hash slot. The ledger's and the rate limiter's scripts
take keys of several orgs or scopes in one call (the holds index, a lease sync of every
org, a request's key, org and model limits), so on a cluster all of tokenomy's keys
share one slot: the prefix is a hash tag (``tk:`` becomes ``{tk}:``). That runs every
script unchanged on a managed cluster; it does not spread the load over its nodes.
"""

from __future__ import annotations

#: ``redis+cluster://`` and ``rediss+cluster://``: a seed node of a Redis Cluster.
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def node_url(url: str) -> str:
    """The URL of the seed node itself (``redis://`` or ``rediss://``)."""
    return url.replace("+cluster://", "://", 1) if is_cluster_url(url) else url


def slot_prefix(prefix: str) -> str:
    """``prefix`` as a hash tag, so that every key under it lands in one slot."""
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix  # already tagged
    return "{" + prefix.rstrip(":") + "}:"


def slot_of(prefix: str) -> int:
    from redis.crc import key_slot  # (Redis is an optional dependency)

    return int(key_slot(prefix.encode()))
