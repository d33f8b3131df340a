"""Starting ``tokenomy`` commands for a bench, and seeding an org with a key.

Shared by the bench scripts that drive a real ``tokenomy serve`` (and ``tokenomy sim``)
as subprocesses: a free port, a start that waits for a ready URL, a funded key.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    args: list[str],
    port: int,
    ready: str,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cpus: str = "",
    profile: str = "",
    timeout_s: float = 60.0,
) -> subprocess.Popen[bytes]:
    """``python -m tokenomy ARGS --port PORT``, once ``ready`` (a path) answers 200; its
    output goes to ``log``. ``cpus`` pins it (taskset); ``profile`` runs it under
    cProfile, writing the stats there when it exits (see profile_serve.py)."""
    argv = [sys.executable, "-m", "tokenomy", *args, "--port", str(port)]
    if profile:
        argv[1:3] = [str(Path(__file__).with_name("profile_serve.py")), profile, "tokenomy"]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start; see {log}")


def seed_key(db_url: str, name: str = "bench", topup_nanos: int = 10**15) -> str:
    """A new org (USD, prepaid) topped up with ``topup_nanos`` and a key of it: the key's
    secret. Migrates the database first."""
    from tokenomy.billing.money import Currency
    from tokenomy.ledger.store import Kind, LedgerStore
    from tokenomy.store.db import migrate, open_engine
    from tokenomy.store.keys import KeyStore

    engine = open_engine(db_url)
    try:
        migrate(engine)
        ledger = LedgerStore(engine)
        org = ledger.create_org(name, Currency.USD)
        if topup_nanos:
            ledger.post(Kind.TOPUP, org.id, topup_nanos)
        key, _ = KeyStore(engine).create(name, org_id=org.id)
    finally:
        engine.dispose()
    return key
