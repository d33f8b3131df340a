"""Vendor connections as companies run them: a real TLS upstream (a private CA, mutual
TLS), a real proxy (proxy.py) with credentials, the environment's proxy settings, a full
connection pool, and answers past the size cap."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
from aiohttp import web

from tests.conftest import ADMIN_KEY
from tests.servers import ThreadServer, free_port
from tokenomy.app import app_for
from tokenomy.config import ConfigError, ServerConfig, parse_config
from tokenomy.core.errors import UpstreamError
from tokenomy.core.proxy_url import Proxy, bypassed, proxy_from_env
from tokenomy.core.registry import Deployment, Vendor
from tokenomy.gateway.registry import build_registry
from tokenomy.providers.factory import make_provider
from tokenomy.providers.response import ResponseTooLarge
from tokenomy.providers.sse import iter_event_bytes
from tokenomy.services import build_services
from tokenomy.sim.server import create_sim_app

PROXY_USER, PROXY_PASSWORD = "acme", "s3cret:pw"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA, a server certificate for localhost and a client certificate."""
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    # Mutual TLS: the server wants a client certificate the same CA signed.
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("gateway.acme.example")
    pki = Pki(tmp / "ca.pem", tmp / "client.pem", tmp / "client.key", server_ctx)
    ca.cert_pem.write_to_path(str(pki.ca))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    return pki


class TlsServer(ThreadServer):
    """An aiohttp app served over TLS."""

    def __init__(self, make_app: Any, ctx: ssl.SSLContext) -> None:
        super().__init__(make_app)
        self._ctx = ctx

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ctx).start()


@pytest.fixture(scope="module")
def tls_sim(pki: Pki) -> Iterator[TlsServer]:
    srv = TlsServer(create_sim_app, pki.server).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def real_proxy() -> Iterator[int]:
    """proxy.py (a real forward proxy from PyPI) on a free port, with basic auth."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--basic-auth",
            f"{PROXY_USER}:{PROXY_PASSWORD}",
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("proxy.py did not start")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def proxy_url(port: int, password: str = PROXY_PASSWORD) -> str:
    from urllib.parse import quote

    return f"http://{PROXY_USER}:{quote(password, safe='')}@127.0.0.1:{port}"


def vendor(base_url: str, **kw: Any) -> Vendor:
    return Vendor(
        key="v",
        name="Acme",
        country=None,
        dialect="openai",
        base_url=base_url,
        auth="none",
        api_key=None,
        api_key_env=None,
        stream_usage=True,
        headers={},
        max_connections=kw.pop("max_connections", 4),
        **kw,
    )


async def chat_via(v: Vendor, server: ServerConfig | None = None) -> dict[str, Any]:
    """One chat call through the vendor's provider, the answer's JSON."""
    import orjson

    provider = make_provider(v, server or ServerConfig(first_byte_timeout_s=5))
    dep = Deployment("v/sim-small", v, "sim-small", 1, None, None, None, frozenset(), False)
    try:
        resp = await provider.send(dep, "chat", BODY, stream=False)
        out: dict[str, Any] = orjson.loads(await resp.read())
        return out
    finally:
        await provider.close()


# A real TLS upstream.


async def test_a_vendor_behind_a_private_ca_is_reached_with_its_ca_file_and_client_cert(
    pki: Pki, tls_sim: TlsServer
) -> None:
    v = vendor(
        tls_sim.url + "/v1",
        ca_file=str(pki.ca),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    out = await chat_via(v)
    assert out["choices"][0]["message"]["content"].startswith("[simulated]")


async def test_a_private_ca_is_not_trusted_without_its_ca_file(
    pki: Pki, tls_sim: TlsServer
) -> None:
    v = vendor(
        tls_sim.url + "/v1", client_cert=str(pki.client_cert), client_key=str(pki.client_key)
    )
    with pytest.raises(UpstreamError, match="SSLCertVerificationError"):
        await chat_via(v)


async def test_a_mutual_tls_vendor_refuses_a_gateway_without_its_client_cert(
    pki: Pki, tls_sim: TlsServer
) -> None:
    with pytest.raises(UpstreamError, match="could not be reached"):
        await chat_via(vendor(tls_sim.url + "/v1", ca_file=str(pki.ca)))


# A real proxy.


async def test_an_https_vendor_is_reached_through_a_real_proxy_with_credentials(
    pki: Pki, tls_sim: TlsServer, real_proxy: int
) -> None:
    tls = {"ca_file": str(pki.ca), "client_cert": str(pki.client_cert)}
    tls["client_key"] = str(pki.client_key)
    out = await chat_via(vendor(tls_sim.url + "/v1", proxy=proxy_url(real_proxy), **tls))
    assert out["choices"][0]["message"]["content"].startswith("[simulated]")
    # The same call with a wrong password is refused by the proxy: the call went through it.
    bad = vendor(tls_sim.url + "/v1", proxy=proxy_url(real_proxy, "wrong"), **tls)
    with pytest.raises(UpstreamError, match="407"):
        await chat_via(bad)


async def test_an_http_vendor_is_reached_through_a_real_proxy(
    sim: ThreadServer, real_proxy: int
) -> None:
    out = await chat_via(vendor(sim.url + "/v1", proxy=proxy_url(real_proxy)))
    assert out["choices"][0]["message"]["content"].startswith("[simulated]")
    with pytest.raises(UpstreamError, match="407"):
        await chat_via(vendor(sim.url + "/v1", proxy=proxy_url(real_proxy, "wrong")))


def gateway_config(vendors: str, models: str, tmp: Path, server: str = "") -> str:
    return f"""
server: {{first_byte_timeout_s: 5, read_timeout_s: 5, pool_wait_s: 0.5{server}}}
database: {{url: "sqlite:///{tmp / "gw.db"}"}}
routing: {{breaker_failures: 3, breaker_cooldown_s: 600}}
vendors:
{vendors}
models:
{models}
"""


@contextlib.contextmanager
def running_gateway(text: str, env: dict[str, str] | None = None) -> Iterator[tuple[Any, str, str]]:
    svc = build_services(
        parse_config(text, "test"), {"TOKENOMY_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    )
    srv = ThreadServer(lambda: app_for(svc)).start()
    try:
        secret, rec = svc.keys.create("t")
        svc.key_cache.put(secret, rec)
        yield svc, srv.url, secret
    finally:
        srv.stop()


def test_the_gateway_serves_an_sdk_client_from_a_mtls_vendor_behind_the_environments_proxy(
    pki: Pki, tls_sim: TlsServer, real_proxy: int, tmp_path: Path
) -> None:
    text = gateway_config(
        f"""  acme:
    dialect: openai
    base_url: "{tls_sim.url}/v1"
    auth: none
    ca_file: "{pki.ca}"
    client_cert: "{pki.client_cert}"
    client_key: "{pki.client_key}"
""",
        "  - {name: m, deployments: [{vendor: acme, model: sim-small, price: sim/sim-small}]}",
        tmp_path,
    )
    env = {"HTTPS_PROXY": proxy_url(real_proxy), "NO_PROXY": "example.com,.internal"}
    with running_gateway(text, env) as (svc, url, key):
        assert svc.registry.vendors()[0].proxy == proxy_url(real_proxy)
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        for stream in (False, True):
            if stream:
                parts = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                text_out = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            else:
                r = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                text_out = r.choices[0].message.content or ""
            assert text_out.startswith("[simulated]")
    # With a wrong password in the environment the same gateway cannot reach the vendor.
    env["HTTPS_PROXY"] = proxy_url(real_proxy, "wrong")
    with running_gateway(text, env) as (svc, url, key):
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", **BODY},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 502 and "407" in r.json()["error"]["message"]


def test_environment_proxy_rules_no_proxy_and_a_vendors_own_setting(tmp_path: Path) -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "HTTP_PROXY": "http://h:3128"}
    env["NO_PROXY"] = "localhost, .corp.example,10.0.0.0/8,api.local:8443"
    assert proxy_from_env("https://api.deepseek.com/v1", env) == "http://p:3128"
    assert proxy_from_env("http://api.deepseek.com/v1", env) == "http://h:3128"
    for exempt in ("http://localhost:8001", "https://llm.corp.example", "http://10.1.2.3:80"):
        assert proxy_from_env(exempt, env) is None, exempt
    assert proxy_from_env("https://api.local:8443", env) is None
    assert proxy_from_env("https://api.local:9443", env) == "http://p:3128"
    assert proxy_from_env("https://notcorp.example", env) == "http://p:3128"
    assert proxy_from_env("https://x.com", {"https_proxy": "http://lower:1"}) == "http://lower:1"
    assert bypassed("anything", 443, "*")
    text = gateway_config(
        """  a: {dialect: openai, base_url: "https://a.example/v1", auth: none}
  b: {dialect: openai, base_url: "https://b.example/v1", auth: none, proxy: direct}
  c: {dialect: openai, base_url: "https://c.example/v1", auth: none, proxy: "http://cn:8080"}
""",
        """  - {name: a, deployments: [{vendor: a, model: x, price: sim/sim-small}]}
  - {name: b, deployments: [{vendor: b, model: x, price: sim/sim-small}]}
  - {name: c, deployments: [{vendor: c, model: x, price: sim/sim-small}]}""",
        tmp_path,
    )
    reg = build_registry(parse_config(text, "t"), env)
    proxies = {v.key: v.proxy for v in reg.vendors()}
    assert proxies == {"a": "http://p:3128", "b": None, "c": "http://cn:8080"}
    p = Proxy.parse("http://u%40x:p%3Aw@proxy:8080")
    assert (p.host, p.port) == ("proxy", 8080) and "u@x:p:w" not in repr(p)


def test_config_refuses_a_bad_proxy_a_missing_pem_and_a_key_without_cert(tmp_path: Path) -> None:
    models = "  - {name: a, deployments: [{vendor: a, model: x, price: sim/sim-small}]}"
    for field, why in (
        ('proxy: "socks5://p:1080"', "only http:// proxies"),
        (f'ca_file: "{tmp_path}/none.pem"', "no such file"),
        (f'client_key: "{tmp_path}/gw.db"', "client_key needs client_cert"),
    ):
        (tmp_path / "gw.db").touch()
        vendors = f'  a: {{dialect: openai, base_url: "https://a.example/v1", {field}}}\n'
        with pytest.raises(ConfigError, match=why):
            parse_config(gateway_config(vendors, models, tmp_path), "t")


# The gateway's own overload, and answers past the cap.


def test_a_full_connection_pool_is_a_503_to_retry_and_never_rests_the_vendor(
    sim: ThreadServer, tmp_path: Path
) -> None:
    # One connection, answers that take about 0.4 s each, ten at once: most requests
    # wait for the connection longer than they may. The vendor itself is healthy.
    text = gateway_config(
        f'  narrow: {{dialect: openai, base_url: "{sim.url}/v1", auth: none, max_connections: 1}}',
        "  - {name: m, deployments: [{vendor: narrow, model: pool-sim-slow, price: sim/sim-small}]}",
        tmp_path,
    )
    with running_gateway(text) as (svc, url, key):

        def one(_: int) -> httpx.Response:
            return httpx.post(
                url + "/v1/chat/completions",
                json={"model": "m", **BODY},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(one, range(10)))
        statuses = sorted(r.status_code for r in answers)
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) == {200, 503}, statuses
        refused = [r for r in answers if r.status_code == 503]
        assert all(r.headers.get("retry-after") for r in refused)
        assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
        # The breaker never counted the gateway's own overload: the vendor keeps serving.
        health = svc.router.health
        assert health.allow("narrow/pool-sim-slow")
        snap = health.snapshot("narrow/pool-sim-slow")
        assert snap is None or snap.errors == 0, snap
        assert one(0).status_code == 200


def test_an_answer_over_the_size_cap_is_a_502_not_unbounded_memory(
    sim: ThreadServer, tmp_path: Path
) -> None:
    text = gateway_config(
        f"""  sim: {{dialect: openai, base_url: "{sim.url}/v1", auth: none}}
  roomy: {{dialect: openai, base_url: "{sim.url}/v1", auth: none, max_response_bytes: 1048576}}""",
        """  - {name: m, deployments: [{vendor: sim, model: sim-small, price: sim/sim-small}]}
  - name: e
    deployments: [{vendor: sim, model: sim-embed, price: sim/sim-small, capabilities: [embeddings]}]
  - name: e2
    deployments:
      - {vendor: roomy, model: sim-embed, price: sim/sim-small, capabilities: [embeddings]}""",
        tmp_path,
        server=", max_response_bytes: 4096",
    )
    with running_gateway(text) as (_svc, url, key):
        auth = {"Authorization": f"Bearer {key}"}
        small = httpx.post(url + "/v1/chat/completions", json={"model": "m", **BODY}, headers=auth)
        assert small.status_code == 200, small.text
        # 256 floats an input: four inputs make some 20 kB of JSON.
        big = {"model": "e", "input": ["a", "b", "c", "d"]}
        r = httpx.post(url + "/v1/embeddings", json=big, headers=auth)
        assert r.status_code == 502, r.text
        assert "over 4096 bytes" in r.json()["error"]["message"]
        # A vendor's own cap overrides the server's.
        r = httpx.post(url + "/v1/embeddings", json={**big, "model": "e2"}, headers=auth)
        assert r.status_code == 200 and len(r.json()["data"]) == 4, r.text


async def test_a_stream_event_over_the_cap_ends_the_stream_but_small_events_pass() -> None:
    async def chunks(parts: list[bytes]) -> Any:
        for p in parts:
            yield p
            await asyncio.sleep(0)

    many = [b"data: " + b"x" * 500 + b"\n\n"] * 100  # 50 kB in all, 506 bytes an event
    got = [e async for e in iter_event_bytes(chunks(many), max_event=1024)]
    assert sum(len(e) for e in got) == sum(len(e) for e in many)
    endless = [b"data: "] + [b"y" * 4096] * 100  # one event that never ends
    with pytest.raises(ResponseTooLarge):
        async for _ in iter_event_bytes(chunks(endless), max_event=64 * 1024):
            pass
