"""Fixed log-spaced latency buckets: counts that add up across buckets of time.

Bucket ``i`` counts values ``v`` (milliseconds) with ``BOUNDS[i-1] <= v < BOUNDS[i]``;
bucket 0 holds ``v < BOUNDS[0]`` and the last ``v >= BOUNDS[-1]``. Because the bounds
never change, the histogram of a day is the element-wise sum of its hours' histograms,
so a day's percentiles come from its hours without the raw events.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Final

#: Upper bounds (exclusive) in ms: about 1.5x apart, 1 ms to 5 minutes.
BOUNDS: Final[tuple[int, ...]] = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500,
    2000, 3000, 5000, 7000, 10000, 15000, 20000, 30000, 50000, 70000, 100000, 150000,
    200000, 300000,
)  # fmt: skip
NBUCKETS: Final = len(BOUNDS) + 1


def bucket_of(ms: int) -> int:
    """The bucket index of a value in ms."""
    return bisect_right(BOUNDS, ms)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) estimated from bucket counts, or None when empty.

    Interpolates linearly inside the bucket that holds the rank; the open last bucket
    answers its lower bound.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            lo = 0.0 if i == 0 else float(BOUNDS[i - 1])
            if i >= len(BOUNDS):
                return lo
            hi = float(BOUNDS[i])
            return lo + (hi - lo) * max(0.0, rank - seen) / c
        seen += c
    return float(BOUNDS[-1])


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]
