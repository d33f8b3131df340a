"""Batches run when they are cheapest inside their completion window: a fake clock at
DeepSeek's weekday peak (twice the off-peak price), the official openai SDK against the
running gateway and simulator. A batch that can wait is planned for, and runs no earlier
than, the next off-peak hour; one that cannot wait, or has nothing to gain, runs at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from tests.conftest import Gateway, running_gateway, sim_served, sim_stats
from tests.servers import ThreadServer
from tests.test_batches_openai import chat_line, client, jsonl, upload, wait_ended
from tokenomy.api.batch_routes import BATCHES, Batches
from tokenomy.batches.throughput import Throughput
from tokenomy.cli.main import main as cli_main
from tokenomy.store.schema import batches

#: Wednesday 2026-12-09 10:00 in Shanghai: DeepSeek's morning peak (09:00-12:00).
PEAK = datetime(2026, 12, 9, 2, 0, tzinfo=UTC).timestamp()
#: 12:00 in Shanghai the same day: the lunch off-peak hours (12:00-14:00) begin.
OFF_PEAK = datetime(2026, 12, 9, 4, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def gw(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(sim.url, tmp_path_factory.mktemp("sched"), "sqlite") as g:
        yield g


@pytest.fixture
def clock(gw: Gateway) -> Iterator[FakeClock]:
    b = batches_of(gw)
    c = FakeClock(PEAK)
    b.intake.clock = b.worker.clock = c
    b.worker.throughput.measured = None  # plan at the default rate, as a fresh process does
    yield c
    b.intake.clock = b.worker.clock = time.time


def batches_of(gw: Gateway) -> Batches:
    return gw.server.app[BATCHES]


def create(c: openai.OpenAI, model: str, n: int) -> Any:
    fid = upload(c, jsonl([chat_line(i, model=model) for i in range(n)]))
    return c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
    )


def plan_of(b: Any) -> dict[str, Any]:
    extra = b.model_extra["tokenomy"]
    assert isinstance(extra["plan"], dict)
    return extra["plan"]


def test_a_batch_created_at_peak_waits_for_the_off_peak_hours_and_runs_then(
    gw: Gateway, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    org = gw.new_org(10**10)
    c = client(gw, gw.new_key(org_id=org))
    before = sim_served(sim_stats(gw.sim_url), "ds-reasoner")
    b = create(c, "ds-reasoner", 6)
    plan = plan_of(b)
    assert b.status == "in_progress"
    assert plan["expected_start_at"] == int(OFF_PEAK)
    assert plan["reason"].startswith("later")
    assert plan["expected_finish_at"] > plan["expected_start_at"]
    assert plan["latest_start_at"] >= plan["expected_start_at"]
    # Peak is twice the off-peak price and DeepSeek sells no batch tier: half saved.
    cost, now = Decimal(plan["expected_cost"]), Decimal(plan["cost_now_interactive"])
    assert cost > 0 and now == 2 * cost
    assert Decimal(plan["expected_saving"]) == now - cost and plan["saving_percent"] == 50.0
    assert plan["placements"][0]["lines"] == 6

    # The planned start has not come: the worker claims nothing (it polls every 0.5 s).
    time.sleep(2.0)
    got = c.batches.retrieve(b.id)
    assert got.request_counts is not None and got.request_counts.completed == 0
    # The vendor has seen none of its lines; the gauges count them as scheduled.
    assert sim_served(sim_stats(gw.sim_url), "ds-reasoner") == before
    stats = batches_of(gw).worker.stats  # read every 2 s
    assert stats.scheduled >= 6 and stats.queued >= 6 and stats.running == 0

    monkeypatch.setenv("TOKENOMY_DATABASE_URL", gw.services.config.database.url)
    assert cli_main(["batches", "show", b.id]) == 0
    shown = capsys.readouterr().out
    assert "later: cheaper prices start then" in shown and "(50.0%)" in shown
    assert "2026-12-09 04:00:00" in shown

    clock.t = OFF_PEAK + 1  # lunch time in Shanghai
    done = wait_ended(c, b.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 6


def test_a_batch_that_cannot_wait_runs_at_once_even_at_peak(gw: Gateway, clock: FakeClock) -> None:
    org = gw.new_org(10**10)
    c = client(gw, gw.new_key(org_id=org))
    # At this rate 6 lines take most of the 24-hour window: no time to wait for 12:00.
    batches_of(gw).worker.throughput.default = 6 / (20 * 3600)
    try:
        b = create(c, "ds-reasoner", 6)
    finally:
        batches_of(gw).worker.throughput.default = 2.0
    plan = plan_of(b)
    assert plan["expected_start_at"] == int(PEAK)
    assert plan["latest_start_at"] == int(PEAK)
    assert plan["reason"] == "now: the completion window leaves no time to wait"
    # Its 20 hours run through peak and off-peak hours: priced stretch by stretch.
    now = Decimal(plan["cost_now_interactive"])
    assert now / 2 < Decimal(plan["expected_cost"]) < now
    done = wait_ended(c, b.id)  # the clock still says 10:00, peak
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 6


def test_a_batch_with_nothing_to_gain_by_waiting_runs_at_once(
    gw: Gateway, clock: FakeClock
) -> None:
    org = gw.new_org(10**10)
    c = client(gw, gw.new_key(org_id=org))
    b = create(c, "sim-small", 4)  # no time-of-day prices; a batch price at half
    plan = plan_of(b)
    assert plan["expected_start_at"] == int(PEAK)
    assert plan["reason"] == "now: no cheaper time before the latest start"
    assert Decimal(plan["expected_cost"]) * 2 == Decimal(plan["cost_now_interactive"])
    assert plan["saving_percent"] == 50.0
    done = wait_ended(c, b.id)
    assert done.status == "completed"


def test_a_plan_shows_on_the_anthropic_message_batch_too(gw: Gateway, clock: FakeClock) -> None:
    import anthropic

    org = gw.new_org(10**10)
    a = anthropic.Anthropic(base_url=gw.url, api_key=gw.new_key(org_id=org), max_retries=0)
    mb = a.messages.batches.create(
        requests=[
            {
                "custom_id": f"q{i}",
                "params": {
                    "model": "ds-reasoner",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                },
            }
            for i in range(3)
        ]
    )
    plan = (mb.model_extra or {})["tokenomy"]["plan"]
    assert plan["expected_start_at"] == int(OFF_PEAK)
    clock.t = OFF_PEAK + 1
    deadline = time.monotonic() + 60
    while a.messages.batches.retrieve(mb.id).processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    kinds = [r.result.type for r in a.messages.batches.results(mb.id)]
    assert kinds == ["succeeded"] * 3


def test_the_plan_is_stored_with_the_batch(gw: Gateway, clock: FakeClock, tmp_path: Path) -> None:
    org = gw.new_org(10**10)
    c = client(gw, gw.new_key(org_id=org))
    b = create(c, "ds-reasoner", 2)
    again = c.batches.retrieve(b.id)
    assert plan_of(again) == plan_of(b)
    listed = {x.id: x for x in c.batches.list(limit=100)}
    assert plan_of(listed[b.id]) == plan_of(b)
    assert json.loads(json.dumps(plan_of(b)))["currency"] == "USD"
    c.batches.cancel(b.id)  # scheduled lines are nobody's: cancelling ends them at once
    done = wait_ended(c, b.id)
    assert done.status == "cancelled"
    assert done.request_counts is not None and done.request_counts.completed == 0


def test_a_batch_is_held_at_the_dearest_prices_its_window_can_run_at(
    gw: Gateway, clock: FakeClock
) -> None:
    """Created off-peak, a batch may still run into the afternoon peak: it holds what the
    same lines hold at peak, and is charged only what they cost when they ran."""

    def held_for(at: float) -> tuple[int, Any]:
        clock.t = at
        org = gw.new_org(10**10)
        c = client(gw, gw.new_key(org_id=org))
        b = create(c, "ds-reasoner", 5)
        with gw.services.engine.connect() as conn:
            q = select(batches.c.held_nanos).where(batches.c.id == b.id)
            return int(conn.execute(q).scalar_one()), (c, b.id)

    at_peak, _ = held_for(PEAK)
    off_peak, (c, bid) = held_for(OFF_PEAK + 60)
    assert off_peak == at_peak > 0
    done = wait_ended(c, bid)  # off-peak now: it runs at once
    assert done.status == "completed"


def test_placement_compares_deployments_at_the_price_window_in_effect(gw: Gateway) -> None:
    """Batch lines go where the plan put them: latency-tolerant placement prices a
    deployment at the window of the moment (DeepSeek's peak is twice its off-peak)."""
    router = gw.services.router
    (dep,) = gw.services.registry.resolve("ds-reasoner").deployments

    def token_usd(at: float) -> Decimal:
        (p,) = router.placements([dep], 1000, 1000, batch=True, now=datetime.fromtimestamp(at, UTC))
        assert p.token_usd is not None
        return p.token_usd

    assert token_usd(PEAK) == 2 * token_usd(OFF_PEAK + 60) > 0


def test_throughput_is_measured_only_while_lines_wait() -> None:
    t = Throughput(default=2.0)
    assert t.lines_per_s() == 2.0
    t.sample(0, 100.0, saturated=True)
    t.sample(50, 110.0, saturated=True)  # 5 lines/s while lines waited
    assert t.lines_per_s() == 5.0
    t.sample(51, 120.0, saturated=False)  # idle: says nothing of capacity
    t.sample(52, 130.0, saturated=False)
    assert t.lines_per_s() == 5.0
    t.sample(152, 140.0, saturated=True)  # 10 lines/s, smoothed in
    assert 5.0 < t.lines_per_s() < 10.0
