"""The packaged price catalogue: validated, sourced, dated, and looked up by instant."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from tokenomy.billing.catalog import PriceBook, PriceNotFound, PricingError
from tokenomy.billing.money import Currency
from tokenomy.billing.price_schema import CatalogIn, parse_models, read_packaged
from tokenomy.billing.windows import TimeWindow, first_window

BEIJING = ZoneInfo("Asia/Shanghai")
USD, CNY = Currency.USD, Currency.CNY


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


def bj(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """An instant given in Beijing local time."""
    return datetime(year, month, day, hour, minute, tzinfo=BEIJING)


def entry(**over: Any) -> dict[str, Any]:
    """A minimal valid catalogue entry, with some fields replaced."""
    base: dict[str, Any] = {
        "vendor": "acme",
        "model": "m1",
        "currency": "USD",
        "status": "confirmed",
        "source": "https://example.com/pricing",
        "as_of": "2026-01-01",
        "versions": [
            {"effective_from": "2026-01-01T00:00:00Z", "prices": {"input": "1", "output": "2"}}
        ],
    }
    base.update(over)
    return base


def version(**over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "effective_from": "2026-01-01T00:00:00Z",
        "prices": {"input": "1", "output": "2"},
    }
    v.update(over)
    return v


# ------------------------------------------------------------------ the packaged data


def test_every_catalogue_entry_has_source_and_as_of() -> None:
    raw = read_packaged("prices.yaml")
    assert raw["schema"] == 1
    assert len(raw["models"]) >= 20
    for m in raw["models"]:
        name = f"{m.get('vendor')}/{m.get('model')}"
        assert isinstance(m.get("source"), str) and m["source"].strip(), f"{name}: no source"
        assert m.get("as_of"), f"{name}: no as_of"
        as_of = date.fromisoformat(str(m["as_of"]))
        assert date(2024, 1, 1) <= as_of <= date(2027, 1, 1), f"{name}: implausible as_of"
        if m["status"] != "simulated":
            assert m["source"].startswith("https://"), f"{name}: source is not a URL"


def test_every_built_version_carries_source_as_of_and_status(book: PriceBook) -> None:
    versions = [v for m in book for v in m.versions]
    assert versions
    for v in versions:
        assert v.source.strip() and isinstance(v.as_of, date), v.id
        assert v.status in {"confirmed", "reported", "unconfirmed", "simulated"}, v.id
        assert v.id == f"{v.vendor}/{v.model}/{v.currency}@" + v.effective_from.astimezone(
            UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert book.version(v.id) is v


def test_catalogue_instants_are_kept_in_utc() -> None:
    (m,) = parse_models(
        [
            entry(
                versions=[
                    version(
                        effective_from="2026-02-16T00:00:00+08:00",
                        promotions=[
                            {
                                "name": "launch",
                                "starts": "2026-02-16T00:00:00+08:00",
                                "ends": "2026-03-01T08:00:00+08:00",
                                "multiplier": "0.5",
                            }
                        ],
                    )
                ],
                priced_until="2026-06-01T00:00:00+08:00",
            )
        ]
    )
    (v,) = m.versions
    promo = v.promotions[0]
    assert v.effective_from == bj(2026, 2, 16, 0) and v.effective_from.tzinfo is UTC
    assert v.until == bj(2026, 6, 1, 0) and v.until is not None and v.until.tzinfo is UTC
    assert promo.starts == bj(2026, 2, 16, 0) and promo.starts.tzinfo is UTC
    assert promo.ends == datetime(2026, 3, 1, tzinfo=UTC) and promo.ends.tzinfo is UTC
    assert v.id == "acme/m1/USD@2026-02-15T16:00:00Z"


def test_catalogue_validates_strictly() -> None:
    CatalogIn.model_validate(read_packaged("prices.yaml"))  # no error, no extra keys


def test_versions_chain_without_gaps(book: PriceBook) -> None:
    for m in book:
        for a, b in zip(m.versions, m.versions[1:], strict=False):
            assert a.until == b.effective_from, a.id
            assert a.effective_from < b.effective_from


@pytest.mark.parametrize(
    "vendor", ["deepseek", "qwen", "zhipu", "minimax", "moonshot", "volcengine", "anthropic"]
)
def test_each_required_vendor_has_a_real_price_now(book: PriceBook, vendor: str) -> None:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    priced = [
        book.lookup(m.vendor, m.model, now, currency=m.currency)
        for m in book
        if m.vendor == vendor and m.at(now) is not None
    ]
    real = [v for v in priced if v.status in {"confirmed", "reported"}]
    assert real, f"no confirmed or reported {vendor} price at {now}"


def _single(book: PriceBook, vendor: str, model: str, currency: Currency) -> dict[str, Decimal]:
    v = book.lookup(vendor, model, datetime(2026, 11, 25, tzinfo=UTC), currency=currency)
    assert len(v.tiers) == 1
    p = v.tiers[0].prices
    out = {"input": p.input, "output": p.output}
    if p.cached_input is not None:
        out["cached_input"] = p.cached_input
    if p.cache_write is not None:
        out["cache_write"] = p.cache_write
    return out


def test_issue_figures_claude_opus_4_6(book: PriceBook) -> None:
    p = _single(book, "anthropic", "claude-opus-4-6", USD)
    assert p == {
        "input": Decimal(5),
        "output": Decimal(25),
        "cached_input": Decimal("0.5"),
        "cache_write": Decimal("6.25"),  # 5-minute write, 1.25x input
    }
    v = book.lookup("anthropic", "claude-opus-4-6", datetime(2026, 11, 25, tzinfo=UTC))
    assert v.batch_multiplier == Decimal("0.5")


def test_issue_figures_minimax_m2_5(book: PriceBook) -> None:
    # MiniMax's pay-as-you-go page lists $1.20 output (not the $1.10 quoted in the issue).
    p = _single(book, "minimax", "MiniMax-M2.5", USD)
    assert p == {
        "input": Decimal("0.30"),
        "output": Decimal("1.20"),
        "cached_input": Decimal("0.03"),
        "cache_write": Decimal("0.375"),
    }


def test_issue_figures_glm_5(book: PriceBook) -> None:
    # Z.ai's international list price; the issue's $0.30/$2.55 is not a published price.
    assert _single(book, "zhipu", "glm-5", USD) == {
        "input": Decimal("1.00"),
        "output": Decimal("3.20"),
        "cached_input": Decimal("0.20"),
    }
    cny = book.lookup("zhipu", "glm-5", datetime(2026, 11, 25, tzinfo=UTC), currency=CNY)
    assert cny.status == "unconfirmed"
    assert cny.tiers[0].prices.input == 4 and cny.tiers[0].prices.output == 18


def test_issue_figures_qwen3_5_plus_tiers(book: PriceBook) -> None:
    # 0.8 yuan is the issue's $0.11 input at about 7.2 yuan to the dollar.
    v = book.lookup("qwen", "qwen3.5-plus", datetime(2026, 11, 25, tzinfo=UTC))
    assert v.currency is CNY
    assert [t.up_to for t in v.tiers] == [131072, 262144, None]
    assert [(t.prices.input, t.prices.output) for t in v.tiers] == [
        (Decimal("0.8"), Decimal("4.8")),
        (Decimal("2.0"), Decimal("12.0")),
        (Decimal("4.0"), Decimal("24.0")),
    ]
    assert v.tier_index(131072) == 0 and v.tier_index(131073) == 1
    assert v.tier_index(262144) == 1 and v.tier_index(262145) == 2


def test_deepseek_windows_are_peak_at_double(book: PriceBook) -> None:
    for currency in (USD, CNY):
        v = book.lookup(
            "deepseek", "deepseek-flash", datetime(2026, 11, 25, tzinfo=UTC), currency=currency
        )
        assert [(w.name, w.multiplier, w.tz) for w in v.windows] == [
            ("peak-am", Decimal(2), "Asia/Shanghai"),
            ("peak-pm", Decimal(2), "Asia/Shanghai"),
        ]
    v = book.lookup("deepseek", "deepseek-flash", datetime(2026, 11, 25, tzinfo=UTC))
    assert v.window_at(bj(2026, 11, 18, 10, 0)) is not None  # Wednesday morning: peak
    assert v.window_at(bj(2026, 11, 18, 12, 0)) is None  # lunch: off-peak
    assert v.window_at(bj(2026, 11, 18, 17, 59)) is not None
    assert v.window_at(bj(2026, 11, 18, 18, 0)) is None
    assert v.window_at(bj(2026, 11, 21, 10, 0)) is None  # Saturday
    assert v.window_at(bj(2026, 10, 1, 10, 0)) is None  # National Day holiday


# ------------------------------------------------------------------------- lookups


def test_lookup_by_instant_and_currency(book: PriceBook) -> None:
    at = datetime(2026, 11, 25, tzinfo=UTC)
    assert book.lookup("deepseek", "deepseek-flash", at).currency is USD  # first listed
    assert book.lookup("deepseek", "deepseek-flash", at, currency=CNY).currency is CNY
    with pytest.raises(PriceNotFound):
        book.lookup("anthropic", "claude-opus-4-6", at, currency=CNY)
    with pytest.raises(PriceNotFound):
        book.lookup("nobody", "nothing", at)
    with pytest.raises(PriceNotFound):  # before the first version
        book.lookup("anthropic", "claude-opus-4-6", datetime(2026, 2, 4, tzinfo=UTC))
    with pytest.raises(PriceNotFound):  # after priced_until
        book.lookup("deepseek", "deepseek-chat", datetime(2025, 9, 5, 16, tzinfo=UTC))
    assert book.lookup("deepseek", "deepseek-chat", datetime(2025, 9, 5, 15, 59, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        book.lookup("anthropic", "claude-opus-4-6", datetime(2026, 11, 25))
    with pytest.raises(PriceNotFound):
        book.version("anthropic/claude-opus-4-6/USD@1999-01-01T00:00:00Z")
    assert ("anthropic", "claude-opus-4-6") in book


def test_history_is_kept(book: PriceBook) -> None:
    """DeepSeek V4 Pro: launch promotion, a cache-price cut, list price, then peak windows."""
    at = datetime(2026, 4, 25, tzinfo=UTC)
    v = book.lookup("deepseek", "deepseek-v4-pro", at)
    assert v.tiers[0].prices.cached_input == Decimal("0.145")
    assert v.promotion_at(at) is not None and v.promotion_at(at).multiplier == Decimal("0.25")  # type: ignore[union-attr]
    later = book.lookup("deepseek", "deepseek-v4-pro", datetime(2026, 4, 27, tzinfo=UTC))
    assert later.tiers[0].prices.cached_input == Decimal("0.0145")
    listed = book.lookup("deepseek", "deepseek-v4-pro", datetime(2026, 6, 1, tzinfo=UTC))
    assert listed.promotions == () and listed.tiers[0].prices.input == Decimal("0.435")


# -------------------------------------------------------------------------- outlook


def test_outlook_peak_to_off_peak(book: PriceBook) -> None:
    o = book.outlook("deepseek", "deepseek-flash", bj(2026, 11, 18, 10, 30))
    assert o.window is not None and o.window.name == "peak-am"
    assert o.changes_at == bj(2026, 11, 18, 12, 0)
    assert o.next_version is None


def test_outlook_skips_weekend_and_holidays(book: PriceBook) -> None:
    friday_evening = book.outlook("deepseek", "deepseek-flash", bj(2026, 11, 20, 19, 0))
    assert friday_evening.window is None
    assert friday_evening.changes_at == bj(2026, 11, 23, 9, 0)  # Monday morning
    # the evening before National Day: the next peak is after the week-long holiday
    eve = book.outlook("deepseek", "deepseek-flash", bj(2026, 9, 30, 19, 0))
    assert eve.changes_at == bj(2026, 10, 8, 9, 0)


def test_outlook_promotion_end(book: PriceBook) -> None:
    o = book.outlook("zhipu", "glm-5.3-flash", datetime(2026, 9, 1, tzinfo=UTC))
    assert o.promotion is not None and o.promotion.name == "launch-50-off"
    assert o.changes_at == bj(2026, 9, 10, 0, 0)
    after = book.outlook("zhipu", "glm-5.3-flash", bj(2026, 9, 10, 0, 0))
    assert after.promotion is None and after.changes_at is None


def test_outlook_next_version(book: PriceBook) -> None:
    o = book.outlook("deepseek", "deepseek-v4-pro", datetime(2026, 5, 1, tzinfo=UTC))
    assert o.changes_at == datetime(2026, 5, 31, 15, 59, tzinfo=UTC)
    assert o.next_version is not None
    assert o.next_version.tiers[0].prices.input == Decimal("0.435")
    ended = book.outlook("deepseek", "deepseek-chat", datetime(2025, 9, 5, 12, tzinfo=UTC))
    assert ended.changes_at == datetime(2025, 9, 5, 16, tzinfo=UTC)
    assert ended.next_version is None  # nothing is known after priced_until
    flat = book.outlook("anthropic", "claude-opus-4-6", datetime(2026, 11, 25, tzinfo=UTC))
    assert (flat.window, flat.promotion, flat.changes_at, flat.next_version) == (
        None,
        None,
        None,
        None,
    )


# ------------------------------------------------------------------ schema rejections


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"source": ""}, "source"),
        ({"as_of": None}, "as_of"),
        ({"currency": "EUR"}, "currency"),
        ({"status": "rumoured"}, "status"),
        ({"versions": []}, "versions"),
        ({"surprise": 1}, "surprise"),
        ({"versions": [version(prices={"input": 0.3, "output": "1"})]}, "float"),
        ({"versions": [version(prices={"input": "-1", "output": "1"})]}, "non-negative"),
        ({"versions": [version(prices={"input": "abc", "output": "1"})]}, "not a decimal"),
        ({"versions": [version(prices={"input": "NaN", "output": "1"})]}, "finite"),
        ({"versions": [version(prices={"input": "1"})]}, "output"),
        ({"versions": [version(effective_from="2026-01-01T00:00:00")]}, "timezone"),
        ({"versions": [version(tiers=[{"input": "1", "output": "1"}])]}, "either prices or tiers"),
        ({"versions": [{"effective_from": "2026-01-01T00:00:00Z"}]}, "either prices or tiers"),
        ({"versions": [version(batch=0.5)]}, "float"),
        (
            {
                "versions": [
                    version(
                        windows=[
                            {
                                "name": "w",
                                "tz": "Mars/Olympus",
                                "start": "01:00",
                                "end": "02:00",
                                "multiplier": "1",
                            }
                        ]
                    )
                ]
            },
            "time zone",
        ),
    ],
)
def test_schema_rejects(over: dict[str, Any], message: str) -> None:
    data = entry(**over)
    if data.get("as_of") is None:
        del data["as_of"]
    with pytest.raises((ValidationError, PricingError, ValueError), match=message):
        parse_models([data])


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([{"up_to": 100, "input": "1", "output": "1"}], "open-ended"),
        ([{"input": "1", "output": "1"}, {"input": "2", "output": "2"}], "open-ended"),
        (
            [
                {"up_to": 100, "input": "1", "output": "1"},
                {"up_to": 50, "input": "1", "output": "1"},
                {"input": "1", "output": "1"},
            ],
            "increase",
        ),
        (
            [
                {"up_to": 100, "input": "1", "output": "1"},
                {"up_to": 100, "input": "1", "output": "1"},
                {"input": "1", "output": "1"},
            ],
            "increase",
        ),
    ],
)
def test_schema_rejects_bad_tiers(tiers: list[dict[str, Any]], message: str) -> None:
    v = {"effective_from": "2026-01-01T00:00:00Z", "tiers": tiers}
    with pytest.raises(PricingError, match=message):
        parse_models([entry(versions=[v])])


def test_schema_rejects_bad_versions_and_promotions() -> None:
    twice = [version(), version()]
    with pytest.raises(PricingError, match="start together"):
        parse_models([entry(versions=twice)])
    with pytest.raises(PricingError, match="priced_until"):
        parse_models([entry(priced_until="2025-12-31T00:00:00Z")])
    promo = {"name": "p", "starts": "2026-01-01T00:00:00Z", "prices": {"storage": "1"}}
    with pytest.raises(PricingError, match="unknown price"):
        parse_models([entry(versions=[version(promotions=[promo])])])
    backwards = {"name": "p", "starts": "2026-02-01T00:00:00Z", "ends": "2026-01-01T00:00:00Z"}
    with pytest.raises(PricingError, match="ends before"):
        parse_models([entry(versions=[version(promotions=[backwards])])])
    dup = {"name": "w", "tz": "UTC", "start": "01:00", "end": "02:00", "multiplier": "1"}
    with pytest.raises(ValidationError, match="unique"):
        parse_models([entry(versions=[version(windows=[dup, dup])])])


def test_override_replaces_same_model_and_currency() -> None:
    over = entry(
        vendor="anthropic",
        model="claude-opus-4-6",
        source="contract 42",
        versions=[version(prices={"input": "4", "output": "20"})],
    )
    book = PriceBook.load([over, entry()])
    v = book.lookup("anthropic", "claude-opus-4-6", datetime(2026, 11, 25, tzinfo=UTC))
    assert (v.tiers[0].prices.input, v.source) == (Decimal(4), "contract 42")
    assert ("acme", "m1") in book
    with pytest.raises(PricingError, match="priced twice"):
        PriceBook([*PriceBook.load(), *parse_models([over])])


# -------------------------------------------------------------------------- windows


def test_window_wrapping_midnight_belongs_to_its_start_day() -> None:
    w = TimeWindow("late", "UTC", time(22), time(2), Decimal("0.5"), days=frozenset({4}))  # Fri
    fri = datetime(2026, 11, 20, tzinfo=UTC)
    assert w.contains(fri.replace(hour=23))
    assert w.contains(fri + timedelta(days=1, hours=1))  # Saturday 01:00
    assert not w.contains(fri + timedelta(days=1, hours=2))
    assert not w.contains(fri + timedelta(hours=1))  # Friday 01:00 belongs to Thursday
    assert not w.contains(fri.replace(hour=21, minute=59))


@pytest.mark.parametrize(
    "windows",
    [
        (  # whole minutes, in zones a quarter and a half hour off UTC, one wrapping midnight
            TimeWindow("peak", "Asia/Kathmandu", time(9, 30), time(12, 1), Decimal(2)),
            TimeWindow("late", "Asia/Kolkata", time(23, 59), time(0, 1), Decimal("0.5")),
        ),
        # A bound inside a minute: the answer may change within it, so nothing is reused.
        (TimeWindow("odd", "UTC", time(10, 0, 30), time(10, 2, 15, 500), Decimal(3)),),
    ],
)
def test_first_window_answers_as_the_windows_do_at_every_instant(
    windows: tuple[TimeWindow, ...],
) -> None:
    start = datetime(2026, 11, 24, 3, 40, tzinfo=UTC)
    starts = [start, start.replace(hour=18, minute=24), start.replace(hour=9, minute=58)]
    for base in starts:
        for seconds in [*range(0, 6 * 60, 7), *range(6 * 60, 0, -11)]:
            at = base + timedelta(seconds=seconds, microseconds=seconds * 997 % 10**6)
            expected = next((w for w in windows if w.contains(at)), None)
            assert first_window(windows, at) is expected, at


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="equal"):
        TimeWindow("w", "UTC", time(1), time(1), Decimal(1))
    with pytest.raises(ValueError, match="days"):
        TimeWindow("w", "UTC", time(1), time(2), Decimal(1), days=frozenset())
    with pytest.raises(ValueError, match="negative"):
        TimeWindow("w", "UTC", time(1), time(2), Decimal(-1))
    with pytest.raises(ValueError, match="time zone"):
        TimeWindow("w", "Nowhere/City", time(1), time(2), Decimal(1))
