"""Time-of-day price windows (DeepSeek's peak hours and off-peak discounts), tz-aware.

A window is a local time range in an IANA time zone, on some weekdays, minus some local
dates (public holidays). When ``start > end`` it wraps midnight, and then it belongs to
the day on which it *starts*: a Friday 22:00-02:00 window covers Saturday 01:00.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenomy.billing.identity_memo import IdentityMemo

ALL_DAYS: Final = frozenset(range(7))
WEEKDAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY: Final = timedelta(days=1)


def require_aware(at: datetime, what: str = "at") -> datetime:
    """``at`` itself, or a ValueError if it has no time zone (a naive time is ambiguous)."""
    if type(at) is datetime and at.tzinfo is UTC:  # a request's instant: nothing to ask
        return at
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {at!r}")
    return at


@dataclass(frozen=True)
class TimeWindow:
    """A recurring local-time window whose prices are ``multiplier`` times the base."""

    name: str
    tz: str
    start: time
    end: time
    multiplier: Decimal
    days: frozenset[int] = ALL_DAYS  # 0 = Monday, as date.weekday()
    except_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"window {self.name!r}: start and end are equal")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError(f"window {self.name!r}: times are local, give the zone in tz")
        if not self.days or not self.days <= ALL_DAYS:
            raise ValueError(f"window {self.name!r}: days must be a non-empty subset of 0..6")
        if self.multiplier < 0:
            raise ValueError(f"window {self.name!r}: multiplier must not be negative")
        try:  # fail when the catalogue loads, not when a request is billed
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"window {self.name!r}: unknown time zone {self.tz!r}") from e

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @cached_property
    def whole_minutes(self) -> bool:
        return not (self.start.second or self.start.microsecond) and not (
            self.end.second or self.end.microsecond
        )

    @property
    def wraps(self) -> bool:
        return self.start > self.end

    def _runs_on(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.except_dates

    def contains(self, at: datetime) -> bool:
        """Whether the instant ``at`` falls inside this window."""
        local = require_aware(at).astimezone(self.zone)
        t, day = local.time().replace(tzinfo=None), local.date()
        if not self.wraps:
            return self.start <= t < self.end and self._runs_on(day)
        if t >= self.start:
            return self._runs_on(day)
        return t < self.end and self._runs_on(day - _DAY)

    def boundaries(self, after: datetime, days: int) -> Iterator[datetime]:
        """Instants after ``after`` (within ``days`` days) at which this window may open or close.

        Candidates only: an instant on an excepted date is yielded too, and callers keep the
        ones where the applicable price actually changes.
        """
        first = require_aware(after).astimezone(self.zone).date() - _DAY
        for offset in range(days + 2):
            day = first + timedelta(days=offset)
            opens = datetime.combine(day, self.start, self.zone)
            closes = datetime.combine(day + _DAY if self.wraps else day, self.end, self.zone)
            for instant in (opens, closes):
                if instant > after:
                    yield instant


def first_window(windows: tuple[TimeWindow, ...], at: datetime) -> TimeWindow | None:
    """The first window in catalogue order that contains ``at`` (windows never stack)."""
    if not windows:
        return None
    minute = int(require_aware(at).timestamp()) // 60
    key = (id(windows), minute)
    hit = _by_minute.get(windows, key)
    if hit is not None:
        return hit[0]
    found = next((w for w in windows if w.contains(at)), None)
    if all(w.whole_minutes for w in windows):
        # Every bound is a whole local minute and zone offsets are whole minutes, so the
        # answer holds for the whole UTC minute: every call billed in it asks the same.
        _by_minute.put(windows, key, (found,))
    return found


#: The window in force per (windows, UTC minute); boxed, as None is an answer too.
_by_minute: IdentityMemo[tuple[TimeWindow | None]] = IdentityMemo()
