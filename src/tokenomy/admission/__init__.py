"""Admission control: rate limits (in memory, or in Redis with per-process leases) and fair
queues."""

from tokenomy.admission.fairqueue import FairQueue, QueueBoard, QueueEntry, Slot, tier_for
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStage,
    Scope,
    Ticket,
)
from tokenomy.admission.redis_limiter import LeasedRateLimiter, RedisRateLimiter

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
