"""Merging the metrics of several workers: counters and histograms add up, a dead
worker's counts stay, and its point-in-time gauges do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tokenomy.analytics.metrics import Metrics
from tokenomy.analytics.metrics_share import SharedMetrics


def _row(latency_ms: int) -> dict[str, object]:
    """A usage event row (every column, as ``gateway.records.usage_row`` makes them)."""
    return {"model": "m", "vendor": "v", "status": "ok", "error_code": None, "attempts": 1,
            "input_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0, "output_tokens": 3,
            "reasoning_tokens": 0, "cost_nanos": 0, "currency": None, "held_nanos": 0,
            "latency_ms": latency_ms, "ttft_ms": 1}  # fmt: skip


def _samples(text: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_workers_metrics_merge(tmp_path: Path) -> None:
    mine, theirs, dead = Metrics(), Metrics(), Metrics()
    for ms in (3, 40):
        mine.observe(_row(ms))
    for ms in (3, 700, 20_000):
        theirs.observe(_row(ms))
    dead.observe(_row(40))
    for m, depth in ((mine, 1), (theirs, 2), (dead, 5)):
        m.gauge("tokenomy_queue_depth", "q", lambda d=depth: d)
        m.gauge("tokenomy_ledger_holds_total", "h", lambda d=depth: d * 10, kind="counter")
    (tmp_path / "1.json").write_bytes(orjson.dumps(theirs.snapshot()))  # pid 1: alive
    (tmp_path / f"{_dead_pid()}.json").write_bytes(orjson.dumps(dead.snapshot()))
    (tmp_path / "junk.json").write_text("{")
    s = _samples(SharedMetrics(mine, tmp_path).metrics.render())
    assert s['tokenomy_requests_total{model="m",vendor="v",status="ok"}'] == 6
    assert s['tokenomy_tokens_total{model="m",vendor="v",type="output"}'] == 18
    h = "tokenomy_request_duration_seconds"
    assert s[f'{h}_count{{model="m",vendor="v"}}'] == 6
    assert s[f'{h}_sum{{model="m",vendor="v"}}'] == pytest.approx(20.786)
    assert s[f'{h}_bucket{{model="m",vendor="v",le="0.005"}}'] == 2
    assert s[f'{h}_bucket{{model="m",vendor="v",le="0.05"}}'] == 4
    assert s[f'{h}_bucket{{model="m",vendor="v",le="1"}}'] == 5
    assert s[f'{h}_bucket{{model="m",vendor="v",le="+Inf"}}'] == 6
    assert s["tokenomy_queue_depth"] == 3  # the dead worker's queue is gone
    assert s["tokenomy_ledger_holds_total"] == 80  # ... its holds happened
