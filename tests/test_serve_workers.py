"""``tokenomy serve --workers 2`` as a real process tree: /metrics counts the requests of
every worker whichever one answers the scrape, and a worker killed outright is replaced
by the parent (which says so in its log) while the port keeps serving."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.procs import REDIS_URL, Proc, gateway_yaml, require, running
from tokenomy.analytics.metrics import SECONDS_BUCKETS
from tokenomy.analytics.metrics_share import INTERVAL_S
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyStore

ADMIN_KEY = "tk-admin-" + secrets.token_urlsafe(12)
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SCRAPES = 12


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    """A two-worker gateway (SQLite, live state in Redis) and a key for it."""
    redis_url = require("Redis", REDIS_URL)
    prefix = f"tktest:{secrets.token_hex(4)}:"
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    engine = open_engine(db_url)
    migrate(engine)
    secret, _ = KeyStore(engine).create("workers")
    engine.dispose()
    with running(tmp_path) as procs:
        sim = procs.sim()
        text = gateway_yaml(sim.url, db_url, redis_url=redis_url, redis_prefix=prefix)
        gw = procs.gateway(
            procs.write_config(text), workers=2, env={"TOKENOMY_ADMIN_KEY": ADMIN_KEY}
        )
        _wait_for_workers(gw, 2)
        yield gw, secret
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()


def _fresh() -> httpx.Client:
    """A client opening a new connection for every request, so that the kernel spreads
    them over the workers (SO_REUSEPORT picks a listener per connection)."""
    return httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def _requests(gw: Proc, key: str, n: int) -> None:
    with _fresh() as c:
        for _ in range(n):
            r = c.post(
                gw.url + "/v1/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200, r.text


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _scrape(c: httpx.Client, gw: Proc) -> dict[str, float]:
    r = c.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200
    return _samples(r.text)


def _total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def _children(pid: int) -> set[int]:
    """The worker processes of ``pid`` (spawned by multiprocessing), from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.add(int(stat.parent.name))
    return out


def _wait_for_workers(
    gw: Proc, n: int, not_in: frozenset[int] = frozenset(), timeout: float = 30
) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(gw.pid)
        if len(kids) == n and not kids & not_in:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"workers of {gw.pid}: {_children(gw.pid)}\n{gw.log_tail()}")


def _check_metrics(gw: Proc, n: int) -> None:
    """Every scrape, on a new connection each (so both workers answer some), counts
    ``n`` requests, and the latency histograms merge: counts sum, buckets cumulate."""
    time.sleep(2 * INTERVAL_S)  # the other worker's last snapshot is at most this old
    seen = []
    with _fresh() as c:
        for _ in range(SCRAPES):
            s = _scrape(c, gw)
            seen.append(_total(s, "tokenomy_requests_total{"))
            hist = "tokenomy_request_duration_seconds"
            assert _total(s, hist + "_count{") == n
            bucket = hist + '_bucket{model="sim-small",vendor="sim",le='
            cum = [s[f'{bucket}"{le}"}}'] for le in (*map(_num, SECONDS_BUCKETS), "+Inf")]
            assert cum == sorted(cum) and cum[-1] == n
            assert _total(s, "tokenomy_ledger_holds_total") >= 0
    assert seen == [n] * SCRAPES, seen


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def test_metrics_under_two_workers_count_every_request(workers: tuple[Proc, str]) -> None:
    gw, key = workers
    n = 40
    _requests(gw, key, n)
    _check_metrics(gw, n)
    assert gw.terminate() == 0


def test_a_killed_worker_is_replaced_and_logged_and_its_counts_kept(
    workers: tuple[Proc, str],
) -> None:
    gw, key = workers
    _requests(gw, key, 20)
    _check_metrics(gw, 20)
    before = _children(gw.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "was killed" not in gw.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.05)
    _requests(gw, key, 10)  # the port serves on, whether the new worker is up yet or not
    after = _wait_for_workers(gw, 2, not_in=frozenset({victim}))
    assert len(after & before) == 1
    (new,) = after - before
    log = gw.log_tail(200)
    assert f"worker pid {victim} was killed by SIGKILL" in log, log
    assert f"started worker pid {new} in place of pid {victim}" in log, log
    _requests(gw, key, 30)
    _check_metrics(gw, 60)  # the dead worker's requests are still counted
    assert gw.terminate() == 0  # and SIGTERM still stops the whole tree cleanly
