"""Power-aware placement and the ``tokenomy plan`` arithmetic."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tokenomy.cli.main import main
from tokenomy.routing.power import (
    Placement,
    PowerPrice,
    Region,
    energy_usd,
    kwh_per_million_tokens,
    latency_tolerant,
    place,
    plan,
    to_usd,
)

CNY_PER_USD = D("7")


def test_120_trillion_tokens_at_2000_per_call() -> None:
    p = plan(D("120e12"), D(2000), D(2000), D(700), [], cny_per_usd=CNY_PER_USD)
    # 120e12 / 2e3 = 6e10: sixty billion calls a day, about 694 thousand a second.
    assert p.calls_per_day == D("60e9")
    assert p.calls_per_s.quantize(D("0.1")) == D("694444.4")
    assert p.tokens_per_s.quantize(D(1)) == D(1388888889)
    assert p.gpus == 694445  # ceil(1,388,888,888.9 / 2000)


def test_600_billion_calls_a_day_is_about_6_94_million_a_second() -> None:
    # The headline figure: 600 billion calls of 2,000 tokens (1.2e15 tokens a day).
    p = plan(D("1.2e15"), D(2000), D(2000), D(700), [], cny_per_usd=CNY_PER_USD)
    assert p.calls_per_day == D("600e9")
    assert p.calls_per_s.quantize(D("0.01")) == D("6944444.44")


def test_energy_and_power_cost() -> None:
    prices = [PowerPrice.parse("west=0.2CNY"), PowerPrice.parse("us=0.14")]
    p = plan(D("864e8"), D(1000), D(1000), D(500), prices, cny_per_usd=CNY_PER_USD, pue=D("1.5"))
    # 86.4e9 tokens/day = 1e6 tokens/s → 1000 GPUs × 500 W × 1.5 PUE = 750 kW = 18,000 kWh/day.
    assert p.gpus == 1000
    assert p.kw == D(750)
    assert p.kwh_per_day == D(18000)
    assert p.kwh_per_m_tokens == D(18000) / D(86400)
    west, us = p.rows
    assert west.cost_per_day == D(3600) and west.currency == "CNY"
    assert west.cost_per_day_usd == D(3600) / CNY_PER_USD
    assert us.cost_per_day == D("2520.00") and us.cost_per_day_usd == D("2520.00")
    assert us.cost_per_m_tokens == p.kwh_per_m_tokens * D("0.14")


def test_utilization_adds_gpus() -> None:
    full = plan(D("864e8"), D(1000), D(1000), D(500), [], cny_per_usd=CNY_PER_USD)
    half = plan(
        D("864e8"), D(1000), D(1000), D(500), [], cny_per_usd=CNY_PER_USD, utilization=D("0.5")
    )
    assert (full.gpus, half.gpus) == (1000, 2000)


@pytest.mark.parametrize("spec", ["nope", "=1", "x=", "x=abc", "x=-1", "x=1EUR"])
def test_bad_power_prices_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        PowerPrice.parse(spec)


def test_power_price_parsing() -> None:
    assert PowerPrice.parse("gansu=0.25cny") == PowerPrice("gansu", D("0.25"), "CNY")
    assert PowerPrice.parse("us-east=0.12") == PowerPrice("us-east", D("0.12"), "USD")
    assert to_usd(D(7), "CNY", CNY_PER_USD) == D(1)


def test_plan_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            "--tokens-per-day", "120e12",
            "--tokens-per-call", "2000",
            "--tps-per-gpu", "2000",
            "--gpu-watts", "700",
            "--power-price", "cn-west=0.2CNY",
            "--power-price", "us=0.14USD",
            "--cny-per-usd", "7",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "calls/day         60,000,000,000" in out
    assert "calls/s           694,444.4" in out
    assert "GPUs              694,445" in out
    lines = {
        line.split()[0]: line for line in out.splitlines() if line.startswith(("cn-west", "us "))
    }
    assert "¥0.200" in lines["cn-west"] and "$0.140" in lines["us"]
    # 694,445 GPUs × 0.7 kW × 1.2 × 24 h = 14,000,011.2 kWh/day; × ¥0.2 = ¥2,800,002.
    assert "¥2,800,002" in lines["cn-west"] and "$400,000" in lines["cn-west"]
    big = main(["plan", "--tokens-per-day", "1.2e15", "--tokens-per-call", "2000"])
    assert big == 0 and "calls/day         600,000,000,000" in capsys.readouterr().out


def test_plan_command_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--tokens-per-day", "1e12", "--tokens-per-call", "0"])
    assert "tokens per call must be positive" in capsys.readouterr().err


WEST = Region("cn-west", D("0.03"), kwh_per_m_tokens=D("0.1"))
EAST = Region("cn-east", D("0.10"), kwh_per_m_tokens=D("0.1"))
US = Region("us", D("0.14"), kwh_per_m_tokens=D("0.1"))
UNKNOWN = Region("edge", D("0.01"))


def test_region_cost_floor() -> None:
    assert WEST.cost_floor_usd_per_m == D("0.1") * D("1.2") * D("0.03")
    assert UNKNOWN.cost_floor_usd_per_m is None
    # 700 W at 2000 tokens/s: 0.35 J per token, 350 kJ per million = 0.0972 kWh.
    assert kwh_per_million_tokens(D(700), D(2000)).quantize(D("0.0001")) == D("0.0972")


def test_interactive_traffic_stays_near_and_tolerant_traffic_chases_cheap_power() -> None:
    # Self-hosted, the same token price everywhere: power makes the difference.
    cands = [
        Placement("us/a", US, rtt_s=0.02, service_s=5, energy_usd=energy_usd(US, 1000)),
        Placement("east/a", EAST, rtt_s=0.15, service_s=5, energy_usd=energy_usd(EAST, 1000)),
        Placement("west/a", WEST, rtt_s=0.25, service_s=60, energy_usd=energy_usd(WEST, 1000)),
        Placement("edge/a", UNKNOWN, rtt_s=0.01, service_s=5, energy_usd=None),
    ]
    assert [p.deployment_id for p in place(False, None, cands)] == [
        "edge/a",
        "us/a",
        "east/a",
        "west/a",
    ]
    assert [p.deployment_id for p in place(True, None, cands)] == [
        "west/a",
        "east/a",
        "us/a",
        "edge/a",
    ]
    # West would take over a minute; a 30 s deadline puts cn-east first and West last.
    assert [p.deployment_id for p in place(True, 30, cands)] == [
        "east/a",
        "us/a",
        "edge/a",
        "west/a",
    ]


def test_latency_tolerant_requests() -> None:
    assert latency_tolerant({"service_tier": "flex"})
    assert latency_tolerant({"priority": "batch"})
    assert not latency_tolerant({"service_tier": "default"})
    assert not latency_tolerant({})
