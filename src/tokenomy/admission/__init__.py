"""Admission control: rate limits (in memory or Redis) and fair queues at capacity."""

from tokenomy.admission.fairqueue import FairQueue, QueueBoard, QueueEntry, Slot, tier_for
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
