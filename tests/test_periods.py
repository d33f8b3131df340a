"""Budget periods: calendar bounds in a time zone, and the cache of the latest bounds."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tokenomy.ledger.periods import Period, _compute, period_bounds


def ms(text: str, tz: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def test_day_week_month_in_a_zone() -> None:
    at = ms("2026-11-25T23:30:00", "Asia/Shanghai")
    assert period_bounds(Period.DAY, "Asia/Shanghai", at) == (
        ms("2026-11-25T00:00:00", "Asia/Shanghai"),
        ms("2026-11-26T00:00:00", "Asia/Shanghai"),
    )
    # 2026-11-25 is a Wednesday; weeks start on Monday.
    assert period_bounds(Period.WEEK, "UTC", ms("2026-11-25T12:00:00")) == (
        ms("2026-11-23T00:00:00"),
        ms("2026-11-30T00:00:00"),
    )
    assert period_bounds(Period.MONTH, "UTC", ms("2026-12-31T23:59:59")) == (
        ms("2026-12-01T00:00:00"),
        ms("2027-01-01T00:00:00"),
    )
    assert period_bounds(Period.LIFETIME, "UTC", 123) == (0, None)


def test_days_across_dst_changes_are_23_and_25_hours() -> None:
    tz = "Europe/Berlin"
    start, end = period_bounds(Period.DAY, tz, ms("2026-03-29T12:00:00", tz))
    assert end - start == 23 * 3_600_000
    start, end = period_bounds(Period.DAY, tz, ms("2026-10-25T12:00:00", tz))
    assert end - start == 25 * 3_600_000


@pytest.mark.parametrize("period", [Period.DAY, Period.WEEK, Period.MONTH])
def test_cached_bounds_never_answer_for_another_period(period: Period) -> None:
    # Alternate between instants either side of boundaries, in two zones: every answer
    # must equal a fresh computation, whatever was asked before.
    instants = [
        ms("2026-11-30T23:59:59.999"),
        ms("2026-12-01T00:00:00"),
        ms("2026-11-29T10:00:00"),
        ms("2027-01-04T00:00:00"),
        ms("2026-12-01T00:00:00") - 1,
    ]
    for tz in ("UTC", "America/New_York", "UTC"):
        for at in instants + instants[::-1]:
            assert period_bounds(period, tz, at) == _compute(period, tz, at)
