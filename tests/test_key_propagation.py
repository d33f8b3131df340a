"""Key changes reach every gateway process at once, not at the next periodic refresh.

Two real ``tokenomy serve`` processes share a database (SQLite with Redis, PostgreSQL
alone, PostgreSQL with Redis). A key
revoked through one gateway's admin API is refused by the other within milliseconds, and
a key made by ``tokenomy keys create`` (which writes to the database directly) is
accepted by both at once. The periodic refresh runs every ``KEY_REFRESH_S`` (2 s); each
case is repeated so that it cannot pass by landing next to a refresh.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import update

from tests.conftest import throwaway_postgres
from tests.procs import REDIS_URL, Proc, Procs, gateway_yaml, require, running
from tokenomy.services import KEY_REFRESH_S
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KeyCache, KeyStore
from tokenomy.store.schema import api_keys

ADMIN_KEY = "tk-admin-" + secrets.token_urlsafe(12)
TRIALS = 5
#: Well under the refresh interval: what an announcement must beat.
BOUND_S = 0.5
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite+redis", "postgres", "postgres+redis"])
def two_gateways(
    request: pytest.FixtureRequest, procs: Procs, tmp_path: Path
) -> Iterator[tuple[Proc, Proc, Path]]:
    """Two gateways on one database: announcements by Redis pub/sub alone (SQLite), by
    PostgreSQL LISTEN/NOTIFY alone, or by both."""
    redis_url, prefix = "", f"tktest:{secrets.token_hex(4)}:"
    if request.param.endswith("redis"):
        redis_url = require("Redis", REDIS_URL)
    if request.param.startswith("postgres"):
        db_url = request.getfixturevalue("pg_url")
    else:
        db_url = f"sqlite:///{tmp_path / 'keys.db'}"
    sim = procs.sim()
    config = procs.write_config(
        gateway_yaml(sim.url, db_url, redis_url=redis_url, redis_prefix=prefix)
    )
    env = {"TOKENOMY_ADMIN_KEY": ADMIN_KEY}
    a = procs.gateway(config, name="gateway-a", env=env)
    b = procs.gateway(config, name="gateway-b", env=env)
    _warm_up(a, b)
    yield a, b, config
    if redis_url:
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def _status(client: httpx.Client, url: str, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return client.post(url + "/v1/chat/completions", json=BODY, headers=headers).status_code


def _seconds_until(client: httpx.Client, url: str, key: str, status: int) -> float:
    """Seconds from now until ``url`` answers ``key`` with ``status`` (polled back to
    back); fails past three refresh intervals."""
    t0 = time.monotonic()
    while (got := _status(client, url, key)) != status:
        assert got in (200, 401), got
        assert time.monotonic() - t0 < 3 * KEY_REFRESH_S, f"still {got}"
    return time.monotonic() - t0


def _warm_up(*gateways: Proc) -> None:
    """One served request on each gateway first: the first request of a process (cold
    upstream connection, first tokenizer load) would otherwise be counted as lag."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=10) as c:
        made = c.post(gateways[0].url + "/admin/keys", json={"name": "warm"}, headers=admin)
        for gw in gateways:
            _seconds_until(c, gw.url, made.json()["key"], 200)


def _cli(procs: Procs, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tokenomy", *args],
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_a_key_revoked_through_one_gateway_is_refused_by_the_other_at_once(
    two_gateways: tuple[Proc, Proc, Path],
) -> None:
    a, b, _ = two_gateways
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    accepted, refused = [], []
    with httpx.Client(timeout=10) as c:
        for i in range(TRIALS):
            made = c.post(a.url + "/admin/keys", json={"name": f"k{i}"}, headers=admin)
            assert made.status_code == 201
            secret, key_id = made.json()["key"], made.json()["id"]
            accepted.append(_seconds_until(c, b.url, secret, 200))
            assert _status(c, a.url, secret) == 200
            gone = c.delete(f"{a.url}/admin/keys/{key_id}", headers=admin)
            assert gone.status_code == 200
            assert _status(c, a.url, secret) == 401
            refused.append(_seconds_until(c, b.url, secret, 401))
            time.sleep(KEY_REFRESH_S / TRIALS)  # spread the trials over the refresh cycle
    report = f"accepted after {accepted}, refused after {refused} (s)"
    print(report)
    assert max(accepted) < BOUND_S and max(refused) < BOUND_S, report


def test_a_key_made_by_the_command_line_works_on_every_gateway_at_once(
    two_gateways: tuple[Proc, Proc, Path], procs: Procs
) -> None:
    a, b, config = two_gateways
    lags = []
    with httpx.Client(timeout=10) as c:
        for i in range(3):
            out = _cli(procs, "keys", "create", "--config", str(config), "--name", f"cli{i}")
            secret, key_id = out.splitlines()[0], out.split("id: ")[1].split()[0]
            lags += [_seconds_until(c, gw.url, secret, 200) for gw in (a, b)]
            _cli(procs, "keys", "revoke", "--config", str(config), key_id)
            lags += [_seconds_until(c, gw.url, secret, 401) for gw in (a, b)]
    print(f"command-line changes applied after {lags} s")
    assert max(lags) < BOUND_S, lags


def test_the_periodic_refresh_sees_a_change_committed_after_a_later_stamped_one(
    tmp_path: Path,
) -> None:
    """A revocation stamped before the newest change the cache has seen, but committed
    after it (two writers racing), is still picked up by the next refresh."""
    engine = open_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    store = KeyStore(engine)
    cache = KeyCache(store)
    secret, old = store.create("old")
    _, newest = store.create("newest")
    cache.refresh()
    assert cache.lookup(secret) is not None
    stamped = newest.created_ms - 1000  # the slower writer read its clock first
    with engine.begin() as conn:
        conn.execute(
            update(api_keys)
            .where(api_keys.c.id == old.id)
            .values(revoked_ms=stamped, updated_ms=stamped)
        )
    cache.refresh()
    assert cache.lookup(secret) is None
    engine.dispose()


def test_key_announcements_reach_a_cluster_through_its_seed_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A cluster URL is not a URL redis-py's plain client takes; pub/sub reaches every node
    # of a cluster from any one, so the seed node is used as it is.
    import redis

    from tokenomy.store.key_events import RedisAnnouncer

    seen: list[str] = []

    class FakeClient:
        def publish(self, channel: str, message: str) -> None:
            seen.append(f"{channel}={message}")

    def from_url(url: str, **_: object) -> FakeClient:
        redis.connection.parse_url(url)  # the plain client's own check: raises on "+cluster"
        seen.append(url)
        return FakeClient()

    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(from_url))
    RedisAnnouncer("redis+cluster://127.0.0.1:7000/0", "{tk}:")("key_1")
    assert seen == ["redis://127.0.0.1:7000/0", "{tk}:keys=key_1"]
