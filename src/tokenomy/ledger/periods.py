"""Budget periods: calendar-aligned days, ISO weeks and months in a time zone, or lifetime."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: The start of "lifetime": every budget of that period has one bucket.
EPOCH_MS = 0


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    LIFETIME = "lifetime"


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


#: The last bounds computed per (period, zone): every request of a day asks for the same.
_recent: dict[tuple[Period, str], tuple[int, int]] = {}


def period_bounds(period: Period, tz: str, at_ms: int) -> tuple[int, int | None]:
    """[start, end) in epoch ms of the period containing ``at_ms``; end None for lifetime.

    Weeks start on Monday. Bounds are computed in local time, so a day across a DST change
    is 23 or 25 hours long, as the people who set the budget expect.
    """
    if period is Period.LIFETIME:
        return EPOCH_MS, None
    hit = _recent.get((period, tz))
    if hit is not None and hit[0] <= at_ms < hit[1]:
        return hit
    bounds = _compute(period, tz, at_ms)
    _recent[(period, tz)] = bounds
    return bounds


def _compute(period: Period, tz: str, at_ms: int) -> tuple[int, int]:
    z = zone(tz)
    local = datetime.fromtimestamp(at_ms / 1000, z)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        end = start + timedelta(days=1)
    elif period is Period.WEEK:
        start -= timedelta(days=start.weekday())
        end = start + timedelta(days=7)
    else:
        start = start.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    # Re-attach the zone after arithmetic so DST offsets are those of the new wall time.
    start = start.replace(tzinfo=None).replace(tzinfo=z)
    end = end.replace(tzinfo=None).replace(tzinfo=z)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
