"""Managed Redis: TLS (rediss://) and AUTH on the fast script client, a client that rests
while Redis is down instead of making every call wait, and one client per process.

Each test runs its own redis-server on a free port (never the shared instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from redis import exceptions as rx
from redis.asyncio import Redis

from tests.conftest import ADMIN_KEY
from tests.servers import ThreadServer, free_port
from tokenomy.app import app_for
from tokenomy.config import parse_config
from tokenomy.ledger.accounts import OrgMeter
from tokenomy.services import build_services
from tokenomy.store.db import migrate
from tokenomy.store.redis_check import RedisClusterUnsupported
from tokenomy.store.redis_cluster import slot_of
from tokenomy.store.redis_scripts import ScriptClient


@pytest.fixture(autouse=True)
def _needs_redis_server() -> None:
    """Skip locally, fail in CI, without the redis-server binary (and redis-cli)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        why = "redis-server and redis-cli are needed to start private Redis instances"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


ALICE_PW = "alice-pw-0123"
ADMIN_PW = "admin-pw-4567"
SCRIPT = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"


@contextlib.contextmanager
def redis_server(tmp: Path, *args: str, port: int | None = None, conf: str = "") -> Iterator[int]:
    """A private redis-server; yields the port it answers on (plain, or TLS if asked).
    ``conf``: config file lines (ACL users, whose rules hold spaces)."""
    port = port or free_port()
    listen = ["--port", str(port)]
    if "--tls-cert-file" in args:
        listen = ["--port", "0", "--tls-port", str(port)]
    conf_file = tmp / f"redis-{port}.conf"
    conf_file.write_text(conf)
    base = ["redis-server", str(conf_file), *listen, "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*base, "--appendonly", "no", "--dir", str(tmp), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server {args} did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = {"ca": tmp / "ca.pem", "cert": tmp / "redis.pem", "key": tmp / "redis.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return files


def tls_args(f: dict[str, Path]) -> tuple[str, ...]:
    return (
        "--tls-cert-file",
        str(f["cert"]),
        "--tls-key-file",
        str(f["key"]),
        "--tls-ca-cert-file",
        str(f["ca"]),
        "--tls-auth-clients",
        "no",
    )


#: An ACL user for the gateway, and the default user with a password of its own.
ACL = f"user alice on >{ALICE_PW} ~* &* +@all\n"
AUTH_ARGS = ("--requirepass", ADMIN_PW)


async def test_rediss_with_an_acl_user_runs_scripts_on_the_fast_client(
    tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    with redis_server(tmp_path, *tls_args(tls_files), *AUTH_ARGS, conf=ACL) as port:
        url = f"rediss://alice:{ALICE_PW}@localhost:{port}/3?ssl_ca_certs={tls_files['ca']}"
        client = ScriptClient.for_url(url)
        assert client is not None, "rediss:// fell back to redis-py"
        try:
            script = client.register_script(SCRIPT)
            assert await script(keys=["k"], args=[5]) == [b"k", b"5", 5]
            assert await script.submit(keys=["k"], args=[2]) == [b"k", b"2", 7]
        finally:
            await client.aclose()
        # It really was TLS, user alice, db 3: the same key read back through redis-py.
        r = Redis.from_url(url)
        try:
            assert await r.get("k") == b"7"
            assert (await r.acl_whoami()) in (b"alice", "alice")
        finally:
            await r.aclose()
        # A client that does not trust the CA is refused by the handshake.
        bad = ScriptClient.from_url(f"rediss://alice:{ALICE_PW}@localhost:{port}/3")
        with pytest.raises(rx.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await bad.execute("PING")
        await bad.aclose()


async def test_auth_by_password_and_by_user_and_a_wrong_password_is_refused(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path, *AUTH_ARGS, conf=ACL) as port:
        for n, url in enumerate(
            (
                f"redis://:{ADMIN_PW}@127.0.0.1:{port}/2",
                f"redis://alice:{ALICE_PW}@127.0.0.1:{port}/2",
            ),
            start=1,
        ):
            c = ScriptClient.from_url(url)
            try:
                assert await c.register_script(SCRIPT)(keys=["n"], args=[1]) == [b"n", b"1", n]
                assert await c.execute("ACL", "WHOAMI") == (b"default" if n == 1 else b"alice")
            finally:
                await c.aclose()
        wrong = ScriptClient.from_url(f"redis://alice:nope@127.0.0.1:{port}/2")
        with pytest.raises(rx.ResponseError, match="WRONGPASS"):
            await wrong.execute("PING")
        await wrong.aclose()


@contextlib.contextmanager
def silent_listener(port: int) -> Iterator[None]:
    """A port that accepts connections and never answers (a hung or black-holed Redis)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    try:
        yield
    finally:
        s.close()


async def test_while_redis_is_down_calls_fail_at_once_and_it_reconnects_when_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    # With a password, as managed Redis has: connecting waits for AUTH's answer.
    client = ScriptClient("127.0.0.1", port, password="pw", connect_timeout_s=0.5)
    script = client.register_script(SCRIPT)
    loop = asyncio.get_running_loop()
    with silent_listener(port):
        t0 = loop.time()
        with pytest.raises(rx.TimeoutError):
            await script(keys=["k"], args=[1])
        first = loop.time() - t0
        # Every call while it rests fails at once, awaited or queued.
        t0 = loop.time()
        for _ in range(200):
            with pytest.raises(rx.ConnectionError, match="unreachable"):
                await script(keys=["k"], args=[1])
        fut = script.submit(keys=["k"], args=[1])
        with pytest.raises(rx.ConnectionError, match="unreachable"):
            await fut
        rest = loop.time() - t0
        # Once the backoff is over one caller probes; the others still fail at once.
        await asyncio.sleep(0.2)
        probe = asyncio.ensure_future(script(keys=["k"], args=[1]))
        await asyncio.sleep(0.05)
        assert client.resting and not probe.done()
        t0 = loop.time()
        with pytest.raises(rx.ConnectionError, match="under way"):
            await script(keys=["k"], args=[1])
        assert loop.time() - t0 < 0.05
        with pytest.raises(rx.TimeoutError):
            await probe
    assert 0.4 < first < 2.0, first
    assert rest < 0.2, rest  # 201 calls: each of them would have waited 0.5 s before
    # Redis comes back on the same port: after the backoff the client connects again.
    with redis_server(tmp_path, "--requirepass", "pw", port=port):
        deadline = loop.time() + 10
        while True:
            try:
                assert await script(keys=["k"], args=[3]) == [b"k", b"3", 3]
                break
            except rx.ConnectionError:
                assert loop.time() < deadline, "never reconnected"
                await asyncio.sleep(0.05)
        assert not client.resting
    await client.aclose()


@pytest.mark.parametrize("share", [0, 0.01])
def test_a_gateway_on_tls_redis_with_auth_holds_settles_and_limits_through_one_client(
    tmp_path: Path, tls_files: dict[str, Path], sim: ThreadServer, share: float
) -> None:
    with redis_server(tmp_path, *tls_args(tls_files), *AUTH_ARGS, conf=ACL) as port:
        url = f"rediss://alice:{ALICE_PW}@localhost:{port}/0?ssl_ca_certs={tls_files['ca']}"
        text = f"""
server: {{first_byte_timeout_s: 5}}
database: {{url: "sqlite:///{tmp_path / "gw.db"}"}}
ledger: {{redis_url: "{url}", redis_prefix: "tkm:", lease_share: {share}}}
limits: {{lease_share: {share}, key: {{requests_per_minute: 3}}}}
vendors:
  sim: {{dialect: openai, base_url: "{sim.url}/v1", auth: none}}
models:
  - {{name: m, deployments: [{{vendor: sim, model: sim-small, price: sim/sim-small}}]}}
"""
        svc = build_services(parse_config(text, "t"), {"TOKENOMY_ADMIN_KEY": ADMIN_KEY})
        exact: Any = getattr(svc.live, "inner", svc.live)
        limiter: Any = svc.limiter
        # One fast script client for the ledger and the limiter, and one redis-py client.
        assert isinstance(exact._scripts, ScriptClient)
        assert limiter._scripts is exact._scripts
        if share == 0:
            assert limiter._redis is exact.r
        srv = ThreadServer(lambda: app_for(svc)).start()
        try:
            _org, state = _limited_then_settled(svc, srv)
            assert state.admin == 10**10 and state.used > 0, state
            if share == 0:
                assert state.held == 0, state
        finally:
            srv.stop()


def test_a_rediss_url_with_client_cert_params_builds_a_verifying_context(
    tls_files: dict[str, Path],
) -> None:
    url = (
        f"rediss://localhost:6380/0?ssl_ca_certs={tls_files['ca']}"
        f"&ssl_certfile={tls_files['cert']}&ssl_keyfile={tls_files['key']}"
    )
    c = ScriptClient.from_url(url)
    assert c._ssl is not None and c._ssl.verify_mode == ssl.CERT_REQUIRED
    insecure = ScriptClient.from_url("rediss://h:1/0?ssl_cert_reqs=none")
    assert insecure._ssl is not None and insecure._ssl.verify_mode == ssl.CERT_NONE


def _limited_then_settled(svc: Any, srv: ThreadServer) -> tuple[Any, Any]:
    """Four chat calls of a new org against model "m" (limited to 3 a minute): three
    served, the fourth refused; then the org's live state once its usage has settled
    (settlements leave in the background: with leases, every 50 ms)."""
    org = svc.ledger.create_org("acme", "USD")
    svc.ledger.post("topup", org.id, 10**10)
    srv.call(svc.refresh_accounts())
    secret, rec = svc.keys.create("k", org_id=org.id)
    svc.key_cache.put(secret, rec)
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {secret}"}
    codes = [
        httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429], codes

    async def settled() -> Any:
        for _ in range(100):
            # Through the live ledger: with leases it posts the usage they hold first
            # (an org is leased from its second hold in a second).
            state = await svc.live.org_state(OrgMeter(org))
            if state.used > 0:
                return state
            await asyncio.sleep(0.05)
        return state

    return org, srv.call(settled())


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def redis_cluster(tmp: Path) -> Iterator[list[int]]:
    """A real three-node Redis Cluster (no replicas) on free ports."""
    ports: list[int] = []
    while len(ports) < 3:
        # Each node also listens on its port + 10000 (the cluster bus).
        p = free_port()
        if p < 55_000 and p not in ports and _free(p + 10_000):
            ports.append(p)
    with contextlib.ExitStack() as stack:
        for p in ports:
            d = tmp / f"node-{p}"
            d.mkdir()
            stack.enter_context(
                redis_server(
                    d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", port=p
                )
            )
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                ["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                capture_output=True,
                timeout=10,
            ).stdout
        ):
            assert time.monotonic() < deadline, "the cluster never came up"
            time.sleep(0.1)
        yield ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield ports


def gateway_text(tmp: Path, sim_url: str, redis_url: str, share: float = 0) -> str:
    return f"""
server: {{first_byte_timeout_s: 5}}
database: {{url: "sqlite:///{tmp / "gw.db"}"}}
ledger: {{redis_url: "{redis_url}", redis_prefix: "tkc:", lease_share: {share}}}
limits: {{lease_share: {share}, key: {{requests_per_minute: 3}}}}
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none}}
models:
  - {{name: m, deployments: [{{vendor: sim, model: sim-small, price: sim/sim-small}}]}}
"""


def test_a_cluster_node_named_as_a_single_redis_is_refused_at_start_with_the_fix(
    tmp_path: Path, sim: ThreadServer, cluster: list[int]
) -> None:
    text = gateway_text(tmp_path, sim.url, f"redis://127.0.0.1:{cluster[0]}/0")
    svc = build_services(parse_config(text, "t"), {})
    migrate(svc.engine)
    for n in range(20):  # orgs whose keys would land on every node
        svc.ledger.create_org(f"org {n}", "USD")

    async def start() -> None:
        try:
            await svc.start()
        finally:
            await svc.stop()

    with pytest.raises(RedisClusterUnsupported, match=r"redis\+cluster://"):
        asyncio.run(start())


@pytest.mark.parametrize("share", [0, 0.01])
def test_a_gateway_on_a_three_node_redis_cluster_holds_settles_and_limits(
    tmp_path: Path, sim: ThreadServer, cluster: list[int], share: float
) -> None:
    # Seeded with the node that does not serve the keys' slot: the client finds the one.
    slot = slot_of("{tkc}:")
    info = subprocess.run(
        ["redis-cli", "-p", str(cluster[0]), "cluster", "keyslot", "{tkc}:"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(info.stdout) == slot
    owner = ScriptClient.from_url(f"redis+cluster://127.0.0.1:{cluster[0]}", slot=slot)
    owner_port = asyncio.run(_owner_port(owner))
    seed = next(p for p in cluster if p != owner_port)
    text = gateway_text(tmp_path, sim.url, f"redis+cluster://127.0.0.1:{seed}", share)
    svc = build_services(parse_config(text, "t"), {"TOKENOMY_ADMIN_KEY": ADMIN_KEY})
    srv = ThreadServer(lambda: app_for(svc)).start()
    try:
        org, state = _limited_then_settled(svc, srv)
        assert state.admin == 10**10 and state.used > 0, state
        if share == 0:
            assert state.held == 0, state
        srv.call(svc.usage_writer.flush())
        cost = sum(r["cost_nanos"] for r in _events(svc, org.id))
        assert state.used == cost  # exactly what the durable ledger billed
    finally:
        srv.stop()
    # The keys are in the cluster, on the node that serves their slot.
    keys = subprocess.run(
        ["redis-cli", "-p", str(owner_port), "keys", "{tkc}:*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert any(k.startswith("{tkc}:org:") for k in keys), keys
    assert any(k.startswith("{tkc}:rl:") for k in keys), keys


async def _owner_port(client: ScriptClient) -> int:
    await client.execute("PING")
    port = client._addr[1]
    await client.aclose()
    return port


def _events(svc: Any, org_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from tokenomy.store.schema import usage_events

    with svc.engine.connect() as c:
        rows = c.execute(select(usage_events).where(usage_events.c.org_id == org_id))
        return [dict(r._mapping) for r in rows]


def _cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def move_slot(slot: int, src: int, dst: int) -> None:
    """Move one slot and its keys between two nodes, as a resharding does."""
    src_id, dst_id = _cli(src, "cluster", "myid"), _cli(dst, "cluster", "myid")
    _cli(dst, "cluster", "setslot", str(slot), "importing", src_id)
    _cli(src, "cluster", "setslot", str(slot), "migrating", dst_id)
    keys = _cli(src, "cluster", "getkeysinslot", str(slot), "1000").split()
    if keys:
        _cli(src, "migrate", "127.0.0.1", str(dst), "", "0", "5000", "keys", *keys)
    for port in (src, dst):
        _cli(port, "cluster", "setslot", str(slot), "node", dst_id)


async def test_the_script_client_follows_its_slot_when_the_cluster_moves_it(
    cluster: list[int],
) -> None:
    slot = slot_of("{moving}:")
    client = ScriptClient.from_url(f"redis+cluster://127.0.0.1:{cluster[0]}", slot=slot)
    script = client.register_script(SCRIPT)
    assert await script(keys=["{moving}:n"], args=[1]) == [b"{moving}:n", b"1", 1]
    before = client._addr[1]
    after = next(p for p in cluster if p != before)
    await asyncio.to_thread(move_slot, slot, before, after)
    # The call that meets MOVED fails (it was not run); the next goes to the new owner,
    # where the key arrived with its value.
    results = []
    for _ in range(3):
        try:
            results.append(await script(keys=["{moving}:n"], args=[1]))
        except rx.ResponseError as e:
            assert str(e).startswith("MOVED"), e
    assert client._addr[1] == after
    assert results[-1][2] == 1 + len(results)
    await client.aclose()
