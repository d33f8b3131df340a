"""Admission control: rate limits (in memory, Redis, or leased from Redis) and fair queues."""

from tokenomy.admission.fairqueue import FairQueue, QueueBoard, QueueEntry, Slot, tier_for
from tokenomy.admission.leases import LeasedRateLimiter
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStage,
    RedisRateLimiter,
    Scope,
    Ticket,
)

__all__ = [
    "FairQueue",
    "LeasedRateLimiter",
    "Limits",
    "MemoryRateLimiter",
    "QueueBoard",
    "QueueEntry",
    "RateLimitStage",
    "RateLimiter",
    "RedisRateLimiter",
    "Scope",
    "Slot",
    "Ticket",
    "tier_for",
]
