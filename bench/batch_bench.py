"""Batches: how long a large input file takes to upload and to be checked and held, the
gateway's peak memory meanwhile, and the lines per second it then runs on the simulator.

    python bench/batch_bench.py [--lines 50000] [--concurrency 16] [--database URL]
    python bench/batch_bench.py --lines 20000 --interactive-rate 50 --interactive-s 20

Starts ``tokenomy sim`` and ``tokenomy serve`` (SQLite in a temporary directory unless
``--database`` names one), seeds an org and a key, and drives the OpenAI API with httpx.

With ``--interactive-rate R``, interactive chat calls are sent open-loop at R a second
for ``--interactive-s`` seconds twice: first with no batch, then while the batch's lines
are running; their latency (timed from each call's scheduled start, so queueing in the
client or the gateway shows) is printed side by side with the batch's lines/s meanwhile,
then the lines/s of the batch alone once the second phase is over.
``--yield 'concurrency: 4, max_lag_ms: 0'`` sets the config's ``batches.yield_*``
settings (how the worker narrows while interactive calls are served; ``concurrency``
at or above ``--concurrency`` turns it off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
from open_loop import Phase, open_loop, percentile
from procstat import cpu_seconds
from tokenomy_procs import free_port, seed_key, start


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(url: str, name: str) -> float:
    """One unlabelled value from the gateway's /metrics (NaN when it has none)."""
    for line in httpx.get(url).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"Line {i}: say something short."}],
            "max_tokens": 16,
        }
        req = {"custom_id": f"l-{i}", "method": "POST", "url": "/v1/chat/completions"}
        yield json.dumps({**req, "body": body}).encode() + b"\n"


INTERACTIVE_BODY = json.dumps(
    {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "An interactive call: say something short."}],
        "max_tokens": 16,
    }
).encode()


@dataclass
class Overlap:
    """The batch during the second phase."""

    seconds: float  # how long it ran through the phase
    lines_s: float  # lines a second that ended meanwhile
    done: int  # lines ended when the phase was over
    at: float  # and when (perf_counter)


async def while_batch_runs(
    base: str, key: str, batch_id: str, rate: float, seconds: float
) -> tuple[Phase, Overlap]:
    """The open loop while the batch runs, stopped early if it ends: the phase, and what
    the batch did meanwhile."""
    url = f"{base}/batches/{batch_id}"
    headers = {"Authorization": f"Bearer {key}"}
    ended: list[float] = []

    async def finished(session: aiohttp.ClientSession) -> int:
        async with session.get(url, headers=headers) as r:
            b = await r.json()
        if b["status"] in ("completed", "failed", "expired", "cancelled") and not ended:
            ended.append(time.perf_counter())
        rc = b["request_counts"]
        return int(rc["completed"]) + int(rc["failed"])

    async with aiohttp.ClientSession() as session:
        before, t0 = await finished(session), time.perf_counter()

        async def watch() -> None:
            while not ended:
                await asyncio.sleep(0.25)
                await finished(session)

        watcher = asyncio.create_task(watch())
        phase = await open_loop(
            base + "/chat/completions", key, rate, seconds, INTERACTIVE_BODY, lambda: bool(ended)
        )
        watcher.cancel()
        after, t1 = await finished(session), time.perf_counter()
    overlap = min(ended[0] if ended else phase.stop, phase.stop) - phase.start
    lines_s = (after - before) / ((ended[0] if ended else t1) - t0)
    return phase, Overlap(overlap, lines_s, after, t1)


def report(quiet: Phase, busy: Phase, rate: float) -> None:
    print(f"interactive calls at {rate:g}/s, latency from scheduled start (ms):")
    print(f"{'':14}{'no batch':>12}{'batch running':>16}")

    def ms(q: float) -> Callable[[Phase], str]:
        return lambda p: f"{percentile(p.latencies, q) * 1000:.1f}"

    rows: list[tuple[str, Callable[[Phase], str]]] = [
        ("sent", lambda p: f"{p.sent}"),
        ("ok", lambda p: f"{len(p.latencies)}"),
        *((name, ms(q)) for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))),
        ("max", ms(100.0)),
        ("errors", lambda p: f"{sum(p.errors.values())} {p.errors or ''}".strip()),
    ]
    for name, cell in rows:
        print(f"{name:14}{cell(quiet):>12}{cell(busy):>16}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--yield", dest="yield_", default="",
        help="the batches config's yield_* settings, e.g. 'concurrency: 4, max_lag_ms: 0' "
        "(default: the config's defaults; 'concurrency: 16' turns yielding off)",
    )  # fmt: skip
    ap.add_argument("--database", default="")
    ap.add_argument(
        "--create-only", action="store_true", help="measure upload and create, not the run"
    )
    ap.add_argument(
        "--interactive-rate", type=float, default=0.0,
        help="interactive calls a second, sent before and while the batch runs (0: none)",
    )  # fmt: skip
    ap.add_argument("--interactive-s", type=float, default=20.0, help="seconds per phase")
    ap.add_argument(
        "--ttft-ms", type=float, default=None,
        help="the simulator's time to first token (default 0, or 20 with --interactive-rate)",
    )  # fmt: skip
    ap.add_argument(
        "--max-concurrent", type=int, default=0,
        help="the deployment's max_concurrent, so its fair queue orders the tiers (0: none)",
    )  # fmt: skip
    a = ap.parse_args()
    ttft_ms = a.ttft_ms if a.ttft_ms is not None else (20.0 if a.interactive_rate else 0.0)
    cap = f", max_concurrent: {a.max_concurrent}" if a.max_concurrent else ""
    yield_ = "".join(f", yield_{kv.strip()}" for kv in a.yield_.split(",") if kv.strip())
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    db = a.database or f"sqlite:///{tmp / 'gw.db'}"
    key = seed_key(db)
    sim_port, gw_port = free_port(), free_port()
    sim_args = ["sim", "--output-tokens", "16", "--ttft-ms", str(ttft_ms)]
    sim = start(sim_args, sim_port, "/v1/models", tmp / "sim.log")
    config = tmp / "gw.yaml"
    config.write_text(
        f"""
database: {{url: "{db}"}}
admin: {{public_metrics: true}}
batches: {{concurrency: {a.concurrency}, poll_s: 0.1{yield_}}}
vendors:
  sim: {{dialect: openai, base_url: "http://127.0.0.1:{sim_port}/v1", auth: none}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small, max_output: 4096{cap}}}]
"""
    )
    gw = start(["serve", "--config", str(config)], gw_port, "/healthz", tmp / "gw.log")
    try:
        base = f"http://127.0.0.1:{gw_port}/v1"
        h = {"Authorization": f"Bearer {key}"}
        rss0 = peak_rss_mb(gw.pid)
        quiet = None
        if a.interactive_rate:
            # A second's calls first, not counted: new connections and first-call costs.
            asyncio.run(
                open_loop(
                    base + "/chat/completions", key, a.interactive_rate, 1.0, INTERACTIVE_BODY
                )
            )
            quiet = asyncio.run(
                open_loop(
                    base + "/chat/completions",
                    key,
                    a.interactive_rate,
                    a.interactive_s,
                    INTERACTIVE_BODY,
                )
            )
        data = b"".join(lines(a.lines))
        t0 = time.perf_counter()
        r = httpx.post(
            base + "/files", headers=h, files={"file": ("in.jsonl", data)},
            data={"purpose": "batch"}, timeout=600,
        )  # fmt: skip
        r.raise_for_status()
        t1 = time.perf_counter()
        rss_up = peak_rss_mb(gw.pid)
        cpu1 = cpu_seconds(gw.pid)
        b = httpx.post(
            base + "/batches", headers=h, timeout=600,
            json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"},
        )  # fmt: skip
        b.raise_for_status()
        t2 = time.perf_counter()
        cpu2 = cpu_seconds(gw.pid)
        assert b.json()["status"] == "in_progress", b.json()
        rss1 = peak_rss_mb(gw.pid)
        mb = len(data) / 1e6
        print(f"lines {a.lines} ({mb:.1f} MB), database {db.split(':')[0]}")
        print(f"upload            {t1 - t0:6.2f} s")
        print(f"create (check, hold, store) {t2 - t1:6.2f} s, gateway CPU {cpu2 - cpu1:.2f} s")
        print(
            f"gateway peak RSS  {rss0:.0f} MB before, {rss_up:.0f} MB after upload, "
            f"{rss1:.0f} MB after create"
        )
        if a.create_only:
            return
        over = None
        if quiet is not None:
            # Measure only once lines are in progress, so the whole phase overlaps the run.
            url = f"{base}/batches/{b.json()['id']}"
            while not httpx.get(url, headers=h).json()["request_counts"]["completed"]:
                time.sleep(0.05)
            busy, over = asyncio.run(
                while_batch_runs(base, key, b.json()["id"], a.interactive_rate, a.interactive_s)
            )
            report(quiet, busy, a.interactive_rate)
            pauses = metric(
                f"http://127.0.0.1:{gw_port}/metrics", "tokenomy_batch_lag_pauses_total"
            )
            print(
                f"batch ran through {over.seconds:.1f} s of the second phase's "
                f"{busy.stop - busy.start:.1f} s, at {over.lines_s:.0f} lines/s meanwhile "
                f"(sim ttft {ttft_ms:g} ms); claims paused for event-loop lag {pauses:g} times"
            )
        while (s := httpx.get(f"{base}/batches/{b.json()['id']}", headers=h).json())[
            "status"
        ] != "completed":
            time.sleep(0.1)
        t3 = time.perf_counter()
        print(
            f"run               {t3 - t2:6.2f} s, {a.lines / (t3 - t2):.0f} lines/s "
            f"(concurrency {a.concurrency}), {s['request_counts']}"
        )
        if over is not None and over.done < a.lines:
            print(
                f"batch alone after the second phase: {a.lines - over.done} lines in "
                f"{t3 - over.at:.2f} s, {(a.lines - over.done) / (t3 - over.at):.0f} lines/s"
            )
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(30)
        sim.wait(30)


if __name__ == "__main__":
    main()
