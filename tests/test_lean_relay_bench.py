"""The bench's bare relay on the lean server relays what the bench sends it, a 400 KB
prompt (whose body arrives after its head) included: a bench system failing every
request would be measured as a very fast one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import ThreadServer

RELAY = Path(__file__).resolve().parent.parent / "bench" / "lean_relay.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_lean_bench_relay_relays_a_400_kb_prompt(sim: ThreadServer) -> None:
    port = _free_port()
    up = sim.url
    argv = [sys.executable, str(RELAY), "--port", str(port), "--upstream", up]
    argv += ["--stream-upstream", up, "--long-upstream", up]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the relay did not start"
                time.sleep(0.1)
        for content in ("hi", "word " * 80_000):
            body = {"model": "sim-small", "messages": [{"role": "user", "content": content}]}
            r = httpx.post(url, json=body, headers={"Authorization": "Bearer x"}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(10)
