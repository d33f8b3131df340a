"""A tenant with no balance sending 400 KB prompts as fast as it can, beside a paying tenant:
how much the refused tenant moves the paying tenant's latency, and what a refusal costs.

    python bench/noisy_neighbor.py [--rate 200] [--seconds 10] [--hostile 4]
    python bench/noisy_neighbor.py --database postgresql+psycopg://postgres@127.0.0.1/x \\
        --redis redis://127.0.0.1:6379/14

Starts ``tokenomy sim`` and ``tokenomy serve`` (SQLite in a temporary directory unless
``--database`` names one; PostgreSQL needs an empty database), seeds two prepaid orgs
(one topped up, one at zero) with a key each, then runs two phases of the paying tenant's
small calls, open-loop at ``--rate`` a second for ``--seconds``: alone, then while
``--hostile`` connections send the zero-balance tenant's ``--prompt-bytes`` prompts back
to back (each answered 402). Prints the paying tenant's latency percentiles side by side,
the refusals a second, and the gateway's CPU per refusal (from /proc, so it holds on a busy
machine). Issue 23's target: the paying tenant's p99 moves by less than 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from open_loop import Phase, open_loop, percentile
from procstat import cpu_seconds
from tokenomy_procs import free_port, start

from tokenomy.billing.money import Currency
from tokenomy.ledger.store import Kind, LedgerStore
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyStore

#: ``taskset`` arguments for everything but the gateway, with --pin.
PIN_REST: list[str] = []
WORDS = (
    b"the quick brown fox jumps over a lazy dog while tokens flow to the cheapest vendor ".split()
)


def prompt(n: int) -> str:
    out, i = bytearray(), 0
    while len(out) < n:
        out += WORDS[(i * 7 + i // 3) % len(WORDS)] + b" "
        i += 1
    return out[:n].decode()


def body(content: str, max_tokens: int) -> bytes:
    msgs = [{"role": "user", "content": content}]
    return json.dumps({"model": "sim-small", "messages": msgs, "max_tokens": max_tokens}).encode()


PAYING_BODY = body("A paying tenant's call: say something short.", 16)


@dataclass
class Result:
    """A phase: the paying tenant's calls, and the broke tenant's answers meanwhile."""

    paying: Phase = field(default_factory=Phase)
    refused: int = 0  # the broke tenant's answers (402)
    other: dict[str, int] = field(default_factory=dict)  # its other answers, by status
    seconds: float = 0.0
    cpu_s: float = 0.0


async def hostile(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    data: bytes,
    stop: asyncio.Event,
    phase: Result,
) -> None:
    """One connection's worth of refused calls, back to back until ``stop``."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    while not stop.is_set():
        try:
            async with session.post(url, data=data, headers=headers) as r:
                await r.read()
                if r.status == 402:
                    phase.refused += 1
                else:
                    phase.other[str(r.status)] = phase.other.get(str(r.status), 0) + 1
        except (aiohttp.ClientError, TimeoutError) as e:
            phase.other[type(e).__name__] = phase.other.get(type(e).__name__, 0) + 1


def start_wrk(
    url: str, key: str, big: bytes, connections: int, seconds: float, tmp: Path
) -> subprocess.Popen[bytes]:
    """The hostile tenant as wrk (C, one thread): its own CPU stays small beside the
    gateway's, so the machine's two cores are not what the paying tenant waits for."""
    (tmp / "big.json").write_bytes(big)
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(tmp / "big.json"),
        "BENCH_HEADERS": f"Authorization: Bearer {key}",
    }
    lua = Path(__file__).with_name("chat.lua")
    # A 30 s timeout (wrk's own is 2 s): the refused calls wait for their org's turn, up
    # to 10 s, as a client that waits for its answer would.
    argv = [*PIN_REST, "wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "30s"]
    argv += ["-s", str(lua), url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def wrk_summary(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out = proc.communicate(timeout=120)[0].decode()
    for line in out.splitlines():
        if line.startswith("BENCHJSON "):
            return dict(json.loads(line.removeprefix("BENCHJSON ")))
    raise SystemExit(f"wrk printed no summary:\n{out}")


async def run_phase(
    url: str, keys: tuple[str, str], a: argparse.Namespace, n_hostile: int, pid: int, tmp: Path
) -> Result:
    phase = Result()
    big = body(prompt(a.prompt_bytes), 1024)
    timeout = aiohttp.ClientTimeout(total=60)
    wrk = None
    async with aiohttp.ClientSession(timeout=timeout) as bad:
        stop = asyncio.Event()
        attackers = []
        if n_hostile and a.hostile_client == "wrk":
            wrk = start_wrk(url, keys[1], big, n_hostile, a.seconds + 2, tmp)
        elif n_hostile:
            attackers = [
                asyncio.create_task(hostile(bad, url, keys[1], big, stop, phase))
                for _ in range(n_hostile)
            ]
        if n_hostile:
            await asyncio.sleep(1.0)  # under way before the paying tenant's calls are timed
        t0, c0, r0 = time.perf_counter(), cpu_seconds(pid), phase.refused
        phase.paying = await open_loop(url, keys[0], a.rate, a.seconds, PAYING_BODY)
        phase.seconds, phase.cpu_s = time.perf_counter() - t0, cpu_seconds(pid) - c0
        # Those answered within the timed window: the calls still waiting when it ends
        # are answered while the attackers stop, and would inflate the rate.
        refused = phase.refused - r0
        stop.set()
        await asyncio.gather(*attackers)
        phase.refused = refused
    if wrk is not None:
        # wrk ran a second before and after the timed phase: its rate stands for the phase.
        w = wrk_summary(wrk)
        phase.refused = round(w["requests"] / (w["duration_us"] / 1e6) * phase.seconds)
        if w["requests"] != w["errors"]["status"]:
            phase.other["not refused"] = w["requests"] - w["errors"]["status"]
        for kind in ("connect", "read", "write", "timeout"):
            if w["errors"][kind]:
                phase.other[kind] = w["errors"][kind]
    return phase


def report(quiet: Result, noisy: Result, a: argparse.Namespace) -> None:
    print(f"paying tenant at {a.rate:g}/s, latency from scheduled start (ms):")
    print(f"{'':12}{'alone':>10}{'beside 402s':>14}{'moved':>10}")
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)):
        x = percentile(quiet.paying.latencies, q) * 1000
        y = percentile(noisy.paying.latencies, q) * 1000
        print(f"{name:12}{x:>10.2f}{y:>14.2f}{y - x:>+10.2f}")
    alone, beside = quiet.paying, noisy.paying
    print(f"{'ok':12}{len(alone.latencies):>10}{len(beside.latencies):>14}")
    print(f"{'errors':12}{sum(alone.errors.values()):>10}{sum(beside.errors.values()):>14}")
    rate = noisy.refused / noisy.seconds
    extra = noisy.cpu_s - quiet.cpu_s * noisy.seconds / quiet.seconds
    # Beside the paying load's own CPU (scaled to the phase): noise can make it negative.
    per = max(extra, 0.0) / noisy.refused * 1e3 if noisy.refused else float("nan")
    print(
        f"zero-balance tenant: {noisy.refused} refusals (402) in {noisy.seconds:.1f} s = "
        f"{rate:.0f}/s on {a.hostile} connections ({a.hostile_client}), "
        f"{a.prompt_bytes // 1000} KB each; "
        f"other answers {noisy.other or 'none'}"
    )
    print(
        f"gateway CPU: {quiet.cpu_s / quiet.seconds * 100:.0f}% alone, "
        f"{noisy.cpu_s / noisy.seconds * 100:.0f}% beside; {per:.2f} ms per refusal"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="the paying tenant's calls a second")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--hostile", type=int, default=4, help="the zero-balance tenant's connections")
    ap.add_argument("--prompt-bytes", type=int, default=400_000)
    ap.add_argument(
        "--hostile-client",
        choices=("wrk", "aiohttp"),
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="what sends the refused tenant's calls (default: wrk when installed)",
    )
    ap.add_argument("--database", default="", help="a database URL (default: SQLite in a temp dir)")
    ap.add_argument(
        "--pin", action="store_true",
        help="the gateway on CPU 0, everything else (simulator, clients) on the others",
    )  # fmt: skip
    ap.add_argument("--profile", default="", help="write the gateway's cProfile stats here")
    ap.add_argument("--redis", default="", help="a Redis URL (with a PostgreSQL --database)")
    a = ap.parse_args()
    n = os.cpu_count() or 1
    rest = f"1-{n - 1}" if a.pin and n > 1 else ""
    if rest:
        PIN_REST[:] = ["taskset", "-c", rest]
        os.sched_setaffinity(0, range(1, n))  # this process: the paying tenant's client
    tmp = Path(tempfile.mkdtemp(prefix="noisy-neighbor-"))
    db = a.database or f"sqlite:///{tmp / 'gw.db'}"
    engine = open_engine(db)
    migrate(engine)
    ledger = LedgerStore(engine)
    payer, broke = (
        ledger.create_org("paying", Currency.USD),
        ledger.create_org("broke", Currency.USD),
    )
    ledger.post(Kind.TOPUP, payer.id, 10**15)
    keys = (
        KeyStore(engine).create("paying", org_id=payer.id)[0],
        KeyStore(engine).create("broke", org_id=broke.id)[0],
    )
    engine.dispose()
    env = {**os.environ}
    if a.redis:
        env["TOKENOMY_REDIS_URL"] = a.redis
    sim_port, gw_port = free_port(), free_port()
    sim = start(
        ["sim", "--output-tokens", "16", "--ttft-ms", "0"],
        sim_port,
        "/v1/models",
        tmp / "sim.log",
        env=env,
        cpus=rest,
    )
    config = tmp / "gw.yaml"
    config.write_text(
        f"""
database: {{url: "{db}"}}
vendors:
  sim: {{dialect: openai, base_url: "http://127.0.0.1:{sim_port}/v1", auth: none}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small, max_output: 4096, price: openai/gpt-5-mini}}]
"""
    )
    gw = start(
        ["serve", "--config", str(config)],
        gw_port,
        "/healthz",
        tmp / "gw.log",
        env=env,
        profile=a.profile,
        cpus="0" if rest else "",
    )
    try:
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        a_warm = argparse.Namespace(**{**vars(a), "seconds": 1.0})
        asyncio.run(run_phase(url, keys, a_warm, 1, gw.pid, tmp))  # connections, first-call costs
        quiet = asyncio.run(run_phase(url, keys, a, 0, gw.pid, tmp))
        noisy = asyncio.run(run_phase(url, keys, a, a.hostile, gw.pid, tmp))
        print(f"database {db.split(':')[0]}{' + Redis' if a.redis else ''}")
        report(quiet, noisy, a)
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(30)
        sim.wait(30)


if __name__ == "__main__":
    main()
