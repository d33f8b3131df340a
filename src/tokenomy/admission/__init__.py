"""Admission control: rate limits (in memory, or in Redis with per-process leases) and fair
queues. The Redis limiters are in ``admission.redis_limiter``, not imported here: a
gateway without Redis never loads the client library."""

from tokenomy.admission.fairqueue import FairQueue, QueueBoard, QueueEntry, Slot, tier_for
from tokenomy.admission.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStage,
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
    "Scope",
    "Slot",
    "Ticket",
    "tier_for",
]
