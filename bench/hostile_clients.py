"""Hostile clients against `tokenomy serve`: what unauthenticated bodies cost in memory, and
how long slow-header connections stay open.

    python bench/hostile_clients.py [--src SRC_DIR] [--bodies 50] [--slow 200]

Starts `python -m tokenomy serve` (the packaged config, SQLite, in a temporary directory;
``--src`` picks the source tree to run, e.g. an export of an older commit), then:

1. sends ``--bodies`` 8 MB bodies at once, each with a wrong key, each client sending its
   whole body before reading (as most HTTP clients do), and samples the server's RSS;
2. opens ``--slow`` connections that each send half a request head and wait, and times
   how long the server keeps them open (given up on after ``--give-up`` seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BODY = 8_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def big_body(port: int, answers: list[str]) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tk-wrong\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % BODY
    )
    payload = b" " * BODY
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(head + payload)
            got = s.recv(200)
            answers.append(got.split(b"\r\n", 1)[0].decode("latin-1"))
    except OSError as e:
        answers.append(type(e).__name__)


def slow_header(port: int, durations: list[float], give_up: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as s:
        started = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Le")
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            pass
        except OSError:
            pass
        durations.append(time.monotonic() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--bodies", type=int, default=50)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--give-up", type=float, default=120.0)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": args.src,
            "TOKENOMY_DATABASE_URL": f"sqlite:///{tmp}/t.db",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenomy", "serve", "--port", str(port)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port)
            time.sleep(1.0)
            before = rss_mb(proc.pid)
            answers: list[str] = []
            threads = [
                threading.Thread(target=big_body, args=(port, answers), daemon=True)
                for _ in range(args.bodies)
            ]
            peak = before
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.02)
            result = {
                "src": args.src,
                "bodies": args.bodies,
                "rss_before_mb": round(before, 1),
                "rss_peak_mb": round(peak, 1),
                "answers": {a: answers.count(a) for a in set(answers)},
            }
            print(json.dumps(result), flush=True)

            durations: list[float] = []
            slow = [
                threading.Thread(
                    target=slow_header, args=(port, durations, args.give_up), daemon=True
                )
                for _ in range(args.slow)
            ]
            for t in slow:
                t.start()
            for t in slow:
                t.join(args.give_up + 10)
            print(
                json.dumps(
                    {
                        "slow_header_connections": args.slow,
                        "open_for_s_min": round(min(durations), 1),
                        "open_for_s_max": round(max(durations), 1),
                        "gave_up_after_s": args.give_up,
                    }
                ),
                flush=True,
            )
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
