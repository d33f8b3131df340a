"""The video queue's pure parts and its store: the fair plan, per-second prices, the
simulator's GIF, and claims under a capacity (SQLite and PostgreSQL)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from tests.conftest import migrated_engine
from tokenomy.analytics.queries import Scope
from tokenomy.analytics.video_panel import video_queue_charts, video_queue_history
from tokenomy.billing.catalog import PriceNotFound, PricingError
from tokenomy.billing.fx import FxTable
from tokenomy.billing.media_prices import MediaPriceBook, media_cost
from tokenomy.billing.money import Currency
from tokenomy.sim.media import FPS, HEIGHT, WIDTH, render_gif
from tokenomy.store.schema import video_jobs, video_outputs
from tokenomy.store.videos import COMPLETED, FAILED, IN_PROGRESS, QUEUED, VideoStore
from tokenomy.videos.plan import Running, Waiting, moving_rate, next_owner, percentile, plan

# -- the plan ------------------------------------------------------------------------------


def test_plan_takes_turns_across_owners_whatever_the_submission_order() -> None:
    waiting = [Waiting(f"a{i}", "a", i, 1) for i in range(4)]
    waiting += [Waiting(f"b{i}", "b", 10 + i, 1) for i in range(2)]
    waiting += [Waiting("c0", "c", 20, 1)]
    slots = plan(waiting, [], {}, capacity=1, ms_per_second=1000, now_ms=0)
    order = sorted(slots, key=lambda j: slots[j].position)
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert [slots[j].start_ms for j in order] == [0, 1000, 2000, 3000, 4000, 5000, 6000]
    assert slots["a3"].end_ms == 7000


def test_plan_serves_the_least_recently_served_owner_first_and_uses_every_slot() -> None:
    waiting = [Waiting("a1", "a", 5, 2), Waiting("b1", "b", 6, 2), Waiting("c1", "c", 7, 2)]
    running = [Running("a0", started_ms=0, seconds=2)]
    # a started a job at 0, b at 100, c never: c first, then a, then b.
    slots = plan(waiting, running, {"a": 0, "b": 100}, capacity=2, ms_per_second=500, now_ms=0)
    assert [slots[j].position for j in ("c1", "a1", "b1")] == [1, 2, 3]
    assert slots["c1"].start_ms == 0  # the free slot
    assert slots["a1"].start_ms == 1000  # when a0 ends (2 s at 500 ms/s)
    assert slots["b1"].start_ms == 1000  # when c1 ends


def test_next_owner_is_the_plans_rule() -> None:
    assert next_owner({"a": 1, "b": 2}, {"a": 50, "b": 40}) == "b"
    assert next_owner({"a": 1, "b": 2}, {"a": 50}) == "b"  # never served goes first
    assert next_owner({"a": 3, "b": 2}, {}) == "b"  # then the oldest waiting job


def test_moving_rate_and_percentiles() -> None:
    assert moving_rate([], 7000.0) == 7000.0
    assert moving_rate([(4000, 4), (6000, 2)], 1.0) == 2000.0
    assert percentile([], 0.5) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.95) == 95


# -- prices --------------------------------------------------------------------------------


def test_catalogue_prices_sora_and_seedance_per_second_with_sources() -> None:
    book = MediaPriceBook.load()
    at = datetime(2026, 1, 15, tzinfo=UTC)
    sora = book.lookup("openai", "sora-2", at)
    assert sora.per_second["1280x720"] == Decimal("0.10") and sora.source.startswith("https://")
    pro = book.lookup("openai", "sora-2-pro", at)
    assert pro.per_second["720x1280"] == Decimal("0.30")
    assert pro.per_second["1792x1024"] == Decimal("0.50")
    assert book.lookup("volcengine", "seedance-1-0-pro", at).per_second["1920x1080"] == Decimal(
        "0.1215"
    )
    with pytest.raises(PriceNotFound):  # Sora's shutdown
        book.lookup("openai", "sora-2", datetime(2026, 10, 1, tzinfo=UTC))


def test_media_cost_is_exact_and_converted_once() -> None:
    book = MediaPriceBook.load()
    at = datetime(2026, 9, 1, tzinfo=UTC)  # the FX table starts on 2026-08-26
    p = book.lookup("openai", "sora-2-pro", at)
    fx = FxTable.load()
    usd = media_cost(p, "1024x1792", 12, Currency.USD, fx, at)
    assert usd.cost_nanos == 6 * 10**9 and usd.fx_rate == 1
    cny = media_cost(p, "1024x1792", 12, Currency.CNY, fx, at)
    rate = fx.rate(Currency.USD, Currency.CNY, at.date())
    assert cny.list_cost_nanos == 6 * 10**9
    assert cny.cost_nanos == round(Fraction(6 * 10**9) * rate)
    with pytest.raises(PricingError):
        media_cost(p, "640x480", 4, Currency.USD, fx, at)


def test_config_prices_must_be_quoted() -> None:
    entry: dict[str, Any] = {
        "vendor": "x",
        "model": "m",
        "currency": "USD",
        "status": "simulated",
        "source": "test",
        "as_of": "2026-01-01",
        "versions": [{"effective_from": "2026-01-01T00:00:00Z", "per_second": {"1x1": 0.1}}],
    }
    with pytest.raises(ValueError, match="float"):
        MediaPriceBook.load([entry])


# -- the simulator's GIF -------------------------------------------------------------------


def _decode_gif(data: bytes) -> list[bytes]:
    """Every frame's pixels, read by a plain GIF decoder (variable-width LZW)."""
    assert data[:6] == b"GIF89a" and data[-1:] == b"\x3b"
    w, h, packed = struct.unpack("<HHB", data[6:11])
    assert (w, h) == (WIDTH, HEIGHT)
    i = 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
    frames = []
    while data[i] != 0x3B:
        if data[i] == 0x21:  # an extension: skip its sub-blocks
            i += 2
            while data[i]:
                i += data[i] + 1
            i += 1
            continue
        assert data[i] == 0x2C
        fw, fh = struct.unpack("<HH", data[i + 5 : i + 9])
        i += 10
        min_size = data[i]
        i += 1
        raw = bytearray()
        while data[i]:
            raw += data[i + 1 : i + 1 + data[i]]
            i += data[i] + 1
        i += 1
        frames.append(_lzw_decode(bytes(raw), min_size))
        assert len(frames[-1]) == fw * fh
    return frames


def _lzw_decode(raw: bytes, min_size: int) -> bytes:
    clear, end = 1 << min_size, (1 << min_size) + 1
    size, table, prev = min_size + 1, [bytes((n,)) for n in range(clear)] + [b"", b""], b""
    out, pos = bytearray(), 0
    while True:
        code = (int.from_bytes(raw[pos // 8 : pos // 8 + 3], "little") >> (pos % 8)) & (
            (1 << size) - 1
        )
        pos += size
        if code == clear:
            size, table, prev = min_size + 1, table[: clear + 2], b""
            continue
        if code == end:
            return bytes(out)
        entry = table[code] if code < len(table) else prev + prev[:1]
        if prev:
            table.append(prev + entry[:1])
            if len(table) == 1 << size and size < 12:
                size += 1
        out += entry
        prev = entry


def test_sim_gif_decodes_to_the_frames_of_every_second() -> None:
    frames = _decode_gif(render_gif("a lighthouse at dusk", 3))
    assert len(frames) == 3 * FPS
    assert len(set(frames)) == len(frames)  # it moves
    assert render_gif("a", 1) != render_gif("b", 1)  # coloured after the prompt


# -- the store -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as e:
        yield e


def _job(store: VideoStore, job_id: str, owner: str, created: int) -> None:
    store.create(
        {
            "id": job_id,
            "owner": owner,
            "key_id": "k",
            "model": "m",
            "deployment": "d",
            "prompt": "p",
            "seconds": 4,
            "size": "720x1280",
            "status": QUEUED,
            "created_ms": created,
            "held_nanos": 1,
            "hold_open": 1,
        }
    )


def test_claims_take_turns_stay_under_capacity_and_fence_a_lapsed_claimant(
    engine: Engine,
) -> None:
    store = VideoStore(engine)
    for i in range(3):
        _job(store, f"a{i}", "a", i)
    _job(store, "b0", "b", 10)
    claim = lambda now: store.claim("d", 2, now, 1000, next_owner)  # noqa: E731
    first, second = claim(100), claim(101)
    assert first is not None and second is not None
    assert (first["id"], second["id"]) == ("a0", "b0")  # b's turn before a's second job
    assert claim(102) is None  # capacity 2
    assert store.renew("a0", 1, 5000, progress=50)
    # Both processes die: the leases lapse and the jobs are queued again, then taken over.
    assert store.requeue_lapsed(4000, max_attempts=3, error="{}") == 1  # b0; a0 renewed
    assert store.requeue_lapsed(6000, max_attempts=3, error="{}") == 1  # a0
    assert store.get("a0")["status"] == QUEUED  # type: ignore[index]
    again = [claim(6100), claim(6101)]
    assert [j["id"] for j in again if j] == ["a0", "b0"]  # the same jobs, a's turn first
    assert not store.renew("a0", 1, 9000)  # the first claimant is fenced out
    assert store.renew("a0", 2, 9000)
    assert store.get("a0")["attempts"] == 2  # type: ignore[index]


def test_a_job_with_media_is_completed_never_rendered_again(engine: Engine) -> None:
    store = VideoStore(engine)
    _job(store, "v1", "a", 1)
    assert store.claim("d", 1, 100, 1000, next_owner) is not None
    with engine.begin() as conn:  # recorded with its usage, then the process died
        conn.execute(
            insert(video_outputs).values(
                job_id="v1", content_type="image/gif", data=b"GIF", cost_nanos=1, ts_ms=150
            )
        )
    assert store.requeue_lapsed(2000, max_attempts=3, error="{}") == 0
    done = store.finish_recorded(2000)
    assert [r["id"] for r in done] == ["v1"]
    row = store.get("v1")
    assert row is not None and row["status"] == COMPLETED and row["hold_open"] == 0
    assert store.output("v1") == ("image/gif", b"GIF")


def test_out_of_tries_fails_and_the_hold_is_released_once(engine: Engine) -> None:
    store = VideoStore(engine)
    _job(store, "v1", "a", 1)
    for n in range(2):
        assert store.claim("d", 1, 100 + n * 2000, 1000, next_owner) is not None
        store.requeue_lapsed(1200 + n * 2000, max_attempts=2, error='{"code": "lost"}')
    row = store.get("v1")
    assert row is not None and row["status"] == FAILED
    assert [r["id"] for r in store.unreleased()] == ["v1"]
    assert store.take_release("v1") and not store.take_release("v1")
    assert store.unreleased() == []
    assert store.get("v1")["status"] != IN_PROGRESS  # type: ignore[index]


def test_dashboard_history_counts_waiting_jobs_and_wait_percentiles(engine: Engine) -> None:
    store = VideoStore(engine)
    h = 3_600_000
    # w1 waits an hour and a half, c1 is cancelled after an hour, q1 is still waiting;
    # w1 and s1 (which waited 12 s) start in the second hour.
    for job_id, created in (("w1", 0), ("c1", h // 2), ("q1", h + 1), ("s1", h + 2)):
        _job(store, job_id, "a", created)
    with engine.begin() as conn:
        conn.execute(
            video_jobs.update().where(video_jobs.c.id == "w1").values(started_ms=h + h // 2)
        )
        conn.execute(
            video_jobs.update()
            .where(video_jobs.c.id == "c1")
            .values(status="cancelled", completed_ms=h + h // 2)
        )
        conn.execute(
            video_jobs.update().where(video_jobs.c.id == "s1").values(started_ms=h + 12_002)
        )
    got = video_queue_history(engine, [0, h, 2 * h], h, Scope())
    assert got.depth["m"] == {0: 2.0, h: 1.0, 2 * h: 1.0}  # at each hour's end
    assert got.wait_p50[h] == 12.0 and got.wait_p95[h] == 5400.0  # s1, w1
    assert got.wait_p50[0] is None
    assert "Video jobs waiting" in video_queue_charts(got, [0, h, 2 * h], hourly=True)
