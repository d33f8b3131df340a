"""``tokenomy prices``: what applies at an instant, and when and to what it changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenomy.cli.main import main

PEAK = "2026-11-18T10:30:00+08:00"  # a Wednesday morning in Beijing: DeepSeek's peak


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["prices", *args]) == 0
    return capsys.readouterr().out


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    data = json.loads(run(capsys, *args, "--json"))
    assert isinstance(data, list)
    return data


def rows(out: str) -> tuple[str, list[str]]:
    """The header line and the data lines of a table."""
    lines = out.splitlines()
    assert lines[0].startswith("Prices per million tokens at ")
    return lines[1], lines[2:]


def test_table_is_aligned_and_shows_the_peak_window(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--at", PEAK)
    assert out.splitlines()[0] == "Prices per million tokens at 2026-11-18T02:30:00Z"
    header, body = rows(out)
    assert header.split()[:10] == [
        "vendor",
        "model",
        "cur",
        "input",
        "cached",
        "write",
        "output",
        "request",
        "tiers",
        "active",
    ]
    flash = [r for r in body if r.split()[:3] == ["deepseek", "deepseek-flash", "USD"]]
    assert len(flash) == 1
    assert flash[0].split() == [
        "deepseek",
        "deepseek-flash",
        "USD",
        "0.3",
        "0.006",
        "0.3",
        "1.2",
        "0",
        "1",
        "peak-am",
        "2026-11-18T04:00:00Z",
        "in",
        "0.15",
        "out",
        "0.6",
    ]
    # aligned: every column starts where its header does
    model_at, cur_at, next_at = header.index("model"), header.index("cur"), header.index("next")
    for r in body:
        assert r[model_at - 1] == " " and r[model_at] != " "
        assert r[cur_at : cur_at + 3] in {"USD", "CNY"}
        stamp = r[next_at : next_at + 20]
        assert stamp.startswith("2026-") or stamp.strip() == "-"
    # numbers are right-aligned: the input column ends at the same place on every line
    input_end = header.index("input") + len("input")
    assert all(r[input_end - 1] != " " and r[input_end] == " " for r in body)


def test_filters(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--vendor", "anthropic", "--model", "OPUS", "--at", PEAK)
    _, body = rows(out)
    assert len(body) == 1
    assert body[0].split()[:11] == [
        "anthropic",
        "claude-opus-4-6",
        "USD",
        "5",
        "0.5",
        "6.25",
        "25",
        "0",
        "1",
        "-",
        "-",
    ]
    cny = run_json(capsys, "--currency", "CNY", "--at", PEAK)
    assert cny and {r["currency"] for r in cny} == {"CNY"}
    assert {"qwen", "volcengine", "deepseek", "zhipu"} <= {r["vendor"] for r in cny}
    ds = run_json(capsys, "--vendor", "DeepSeek", "--at", PEAK)
    assert {r["model"] for r in ds} == {"deepseek-flash", "deepseek-v4-pro", "deepseek-v4-flash"}


def test_json_shape_and_strings_not_floats(capsys: pytest.CaptureFixture[str]) -> None:
    [opus] = run_json(capsys, "--model", "claude-opus-4-6", "--at", PEAK)
    assert opus == {
        "vendor": "anthropic",
        "model": "claude-opus-4-6",
        "currency": "USD",
        "at": "2026-11-18T02:30:00Z",
        "status": "confirmed",
        "source": "https://platform.claude.com/docs/en/about-claude/pricing",
        "as_of": "2026-11-25",
        "tiers": 1,
        "version_id": "anthropic/claude-opus-4-6/USD@2026-02-05T00:00:00Z",
        "window": None,
        "promotion": None,
        "prices": {
            "input": "5",
            "cached_input": "0.5",
            "cache_write": "6.25",
            "output": "25",
            "reasoning": "25",
            "request": "0",
        },
        "next_change": None,
    }


def test_peak_then_off_peak(capsys: pytest.CaptureFixture[str]) -> None:
    [ds] = run_json(capsys, "--model", "deepseek-flash", "--currency", "CNY", "--at", PEAK)
    assert ds["window"] == "peak-am"
    assert ds["prices"]["input"] == "2" and ds["prices"]["output"] == "8"
    assert ds["next_change"]["at"] == "2026-11-18T04:00:00Z"
    assert ds["next_change"]["window"] is None
    assert ds["next_change"]["prices"]["input"] == "1"
    # Friday evening: the next change is Monday's peak
    [fri] = run_json(
        capsys,
        "--model",
        "deepseek-flash",
        "--currency",
        "USD",
        "--at",
        "2026-11-20T19:00:00+08:00",
    )
    assert fri["window"] is None and fri["prices"]["input"] == "0.15"
    assert fri["next_change"]["at"] == "2026-11-23T01:00:00Z"
    assert fri["next_change"]["window"] == "peak-am"


def test_promotion_and_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--model", "glm-5.3-flash", "--at", "2026-09-01T00:00:00Z")
    _, [row] = rows(out)
    assert row.split() == [
        "zhipu",
        "glm-5.3-flash",
        "USD",
        "0.075",
        "0.015",
        "0.075",
        "0.25",
        "0",
        "1",
        "launch-50-off",
        "2026-09-09T16:00:00Z",
        "in",
        "0.15",
        "out",
        "0.5",
    ]


def test_next_version_and_end_of_known_prices(capsys: pytest.CaptureFixture[str]) -> None:
    [pro] = run_json(
        capsys, "--model", "deepseek-v4-pro", "--currency", "USD", "--at", "2026-05-01T00:00:00Z"
    )
    assert pro["promotion"] == "v4-pro-75-off" and pro["prices"]["input"] == "0.435"
    assert pro["next_change"] == {
        "at": "2026-05-31T15:59:00Z",
        "version_id": "deepseek/deepseek-v4-pro/USD@2026-05-31T15:59:00Z",
        "window": None,
        "promotion": None,
        "prices": {
            "input": "0.435",
            "cached_input": "0.003625",
            "cache_write": "0.435",
            "output": "0.87",
            "reasoning": "0.87",
            "request": "0",
        },
    }
    out = run(capsys, "--model", "deepseek-chat", "--at", "2025-09-05T12:00:00Z")
    _, [row] = rows(out)
    assert row.split()[-4:] == ["2025-09-05T16:00:00Z", "no", "price", "known"]
    [chat] = run_json(capsys, "--model", "deepseek-chat", "--at", "2025-09-05T12:00:00Z")
    assert chat["next_change"] == {"at": "2025-09-05T16:00:00Z", "version_id": None, "prices": None}


def test_default_instant_is_now(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--vendor", "anthropic")
    assert out.startswith("Prices per million tokens at 20")
    assert "claude-opus-4-6" in out


@pytest.mark.parametrize(
    ("at", "message"),
    [("2026-11-18T10:30:00", "no time zone"), ("yesterday", "not an ISO 8601 instant")],
)
def test_bad_instant(capsys: pytest.CaptureFixture[str], at: str, message: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["prices", "--at", at])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["prices", "--vendor", "nobody", "--at", PEAK])
    assert e.value.code == 1
    assert "no catalogued price matches" in capsys.readouterr().err
    assert run_json(capsys, "--vendor", "nobody", "--at", PEAK) == []


def test_config_overrides_and_pass_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("server: {port: 8123}\n")
    [opus] = run_json(capsys, "--config", str(plain), "--model", "claude-opus-4-6", "--at", PEAK)
    assert opus["prices"]["input"] == "5"
    override = tmp_path / "override.yaml"
    override.write_text(
        """prices:
  - vendor: anthropic
    model: claude-opus-4-6
    currency: USD
    status: confirmed
    source: enterprise agreement 2026-07
    as_of: "2026-07-01"
    versions:
      - effective_from: "2026-07-01T00:00:00Z"
        prices: {input: "4", cached_input: "0.4", output: "20"}
  - vendor: acme
    model: private-1
    currency: CNY
    status: unconfirmed
    source: internal
    as_of: "2026-07-01"
    versions:
      - effective_from: "2026-07-01T00:00:00Z"
        prices: {input: "1", output: "2"}
"""
    )
    got = run_json(capsys, "-c", str(override), "--at", PEAK)
    by_model = {(r["vendor"], r["model"]): r for r in got}
    opus = by_model[("anthropic", "claude-opus-4-6")]
    assert opus["source"] == "enterprise agreement 2026-07"
    assert opus["prices"]["input"] == "4" and opus["prices"]["cache_write"] == "4"
    assert by_model[("acme", "private-1")]["currency"] == "CNY"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "prices:\n  - {vendor: a, model: b, currency: USD, status: confirmed, source: s,"
        " as_of: '2026-01-01', versions: [{effective_from: '2026-01-01T00:00:00Z',"
        " prices: {input: 0.5, output: '1'}}]}\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["prices", "-c", str(bad)])
    assert e.value.code == 2
    assert "float" in capsys.readouterr().err
