"""Batches: how long a large input file takes to upload and to be checked and held, the
gateway's peak memory meanwhile, and the lines per second it then runs on the simulator.

    python bench/batch_bench.py [--lines 50000] [--concurrency 16] [--database URL]

Starts ``tokenomy sim`` and ``tokenomy serve`` (SQLite in a temporary directory unless
``--database`` names one), seeds an org and a key, and drives the OpenAI API with httpx.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tokenomy.billing.money import Currency
from tokenomy.ledger.store import Kind, LedgerStore
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], port: int, ready: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tokenomy", *args, "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start; see {log}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds (stable on a busy machine, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"Line {i}: say something short."}],
            "max_tokens": 16,
        }
        req = {"custom_id": f"l-{i}", "method": "POST", "url": "/v1/chat/completions"}
        yield json.dumps({**req, "body": body}).encode() + b"\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--database", default="")
    ap.add_argument(
        "--create-only", action="store_true", help="measure upload and create, not the run"
    )
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    db = a.database or f"sqlite:///{tmp / 'gw.db'}"
    engine = open_engine(db)
    migrate(engine)
    org = LedgerStore(engine).create_org("bench", Currency.USD)
    LedgerStore(engine).post(Kind.TOPUP, org.id, 10**15)
    key, _ = KeyStore(engine).create("bench", org_id=org.id)
    engine.dispose()
    sim_port, gw_port = free_port(), free_port()
    sim = start(["sim", "--output-tokens", "16"], sim_port, "/v1/models", tmp / "sim.log")
    config = tmp / "gw.yaml"
    config.write_text(
        f"""
database: {{url: "{db}"}}
batches: {{concurrency: {a.concurrency}, poll_s: 0.1}}
vendors:
  sim: {{dialect: openai, base_url: "http://127.0.0.1:{sim_port}/v1", auth: none}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small, max_output: 4096}}]
"""
    )
    gw = start(["serve", "--config", str(config)], gw_port, "/healthz", tmp / "gw.log")
    try:
        base = f"http://127.0.0.1:{gw_port}/v1"
        h = {"Authorization": f"Bearer {key}"}
        rss0 = peak_rss_mb(gw.pid)
        data = b"".join(lines(a.lines))
        t0 = time.perf_counter()
        r = httpx.post(
            base + "/files", headers=h, files={"file": ("in.jsonl", data)},
            data={"purpose": "batch"}, timeout=600,
        )  # fmt: skip
        r.raise_for_status()
        t1 = time.perf_counter()
        rss_up = peak_rss_mb(gw.pid)
        cpu1 = cpu_s(gw.pid)
        b = httpx.post(
            base + "/batches", headers=h, timeout=600,
            json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"},
        )  # fmt: skip
        b.raise_for_status()
        t2 = time.perf_counter()
        cpu2 = cpu_s(gw.pid)
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
        while (s := httpx.get(f"{base}/batches/{b.json()['id']}", headers=h).json())[
            "status"
        ] != "completed":
            time.sleep(0.5)
        t3 = time.perf_counter()
        print(
            f"run               {t3 - t2:6.2f} s, {a.lines / (t3 - t2):.0f} lines/s "
            f"(concurrency {a.concurrency}), {s['request_counts']}"
        )
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(30)
        sim.wait(30)


if __name__ == "__main__":
    main()
