"""What a replica's writer tells the outside: /healthz turns 503 while the writer is
stuck, and strings the database would refuse are refused at the edge instead.

On a real gateway (the lean server and aiohttp, as ``tokenomy serve`` runs them), on
SQLite and on PostgreSQL, with the official SDKs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from sqlalchemy import func, select

from tests.conftest import ADMIN_KEY, throwaway_postgres
from tests.servers import ThreadServer
from tests.test_writer_quarantine import unreachable
from tokenomy.app import app_for
from tokenomy.cli.main import main as cli_main
from tokenomy.config import parse_config
from tokenomy.services import Services, build_services
from tokenomy.store.schema import usage_events


def config_yaml(sim_url: str, db_url: str) -> str:
    return f"""
database: {{url: "{db_url}"}}
writer: {{flush_interval_ms: 20, health_max_lag_s: 0.5}}
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none, name: Sim}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small, context_length: 32768, max_output: 4096}}]
"""


@pytest.fixture(params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path: Path
) -> Iterator[tuple[ThreadServer, Services, str]]:
    with contextlib.ExitStack() as stack:
        db = f"sqlite:///{tmp_path / 'h.db'}"
        if request.param == "postgres":
            db = stack.enter_context(throwaway_postgres())
        cfg = parse_config(config_yaml(sim.url, db), "test-config")
        svc = build_services(cfg, {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY})
        srv = ThreadServer(lambda: app_for(svc)).start()
        stack.callback(srv.stop)
        secret, rec = svc.keys.create("health")
        svc.key_cache.put(secret, rec)
        yield srv, svc, secret


def healthz(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(url + "/healthz", timeout=10)
    return r.status_code, r.json()


def wait_for(url: str, status: int, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = healthz(url)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.05)


def test_healthz_is_503_while_the_writer_is_stuck_and_200_after(
    gw: tuple[ThreadServer, Services, str],
) -> None:
    srv, svc, key = gw
    status, body = healthz(srv.url)
    assert status == 200 and body["status"] == "ok"
    assert body["writer"] == {
        "pending": 0,
        "oldest_age_s": 0,
        "last_error": None,
        "dead_letters": 0,
    }
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=10)
    with unreachable(svc.engine):
        for _ in range(3):  # the hot path never waits for the database: still answered
            r = client.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert r.choices[0].message.content
        stuck = wait_for(srv.url, 503)
        assert stuck["status"] == "unhealthy"
        assert stuck["writer"]["pending"] >= 3
        assert stuck["writer"]["oldest_age_s"] > 0.5
        # Unauthenticated: the kind of error, never its text (a host, a port, a user name).
        # (SQLite's writer waits on the lock instead of failing: no error to show there.)
        assert ":" not in (stuck["writer"]["last_error"] or "")
        assert "127.0.0.1" not in orjson.dumps(stuck).decode()
    healthy = wait_for(srv.url, 200)
    assert healthy["writer"]["pending"] == 0 and healthy["writer"]["last_error"] is None
    with svc.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(usage_events)).scalar_one() == 3


@pytest.mark.parametrize(
    "model", ["m" * 201, "gpt-4\x00", "sim\nsmall"], ids=["201-chars", "nul", "newline"]
)
def test_a_model_name_the_database_would_refuse_is_a_400_in_each_dialect(
    gw: tuple[ThreadServer, Services, str], model: str
) -> None:
    srv, svc, key = gw
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=10)
    with pytest.raises(openai.BadRequestError) as oe:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert oe.value.status_code == 400
    err = oe.value.body
    assert (
        isinstance(err, dict) and err["param"] == "model" and err["type"] == "invalid_request_error"
    )
    claude = anthropic.Anthropic(base_url=srv.url, api_key=key, max_retries=0, timeout=10)
    with pytest.raises(anthropic.BadRequestError) as ae:
        claude.messages.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    assert ae.value.status_code == 400
    assert ae.value.body["type"] == "error"  # type: ignore[index]
    assert ae.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    # A 200-character name is fine: an unknown model, recorded as a 404 like any other.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="m" * 200, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    srv.call(svc.usage_writer.flush())
    assert svc.usage_writer.health().dead_letters == 0
    with svc.engine.connect() as c:
        models = [r[0] for r in c.execute(select(usage_events.c.model))]
    assert models == ["m" * 200]


def test_a_poison_record_shows_in_healthz_and_metrics_and_later_requests_still_land(
    gw: tuple[ThreadServer, Services, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record the database refuses (made here directly: the edge refuses what it
    knows) is counted in /healthz and /metrics, and the replica keeps recording."""
    srv, svc, key = gw
    poison = {"request_id": "req_poison", "ts_ms": 1, "model": None}  # NOT NULL: refused

    async def submit() -> None:
        svc.usage_writer.submit_many([(usage_events, poison)])

    srv.call(submit())
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=10)
    for _ in range(5):
        client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    srv.call(svc.usage_writer.flush())
    status, body = healthz(srv.url)
    assert status == 200 and body["writer"]["dead_letters"] == 1
    assert body["writer"]["pending"] == 0
    metrics = httpx.get(
        srv.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).text
    (line,) = [
        x for x in metrics.splitlines() if x.startswith("tokenomy_writer_dead_letters_total")
    ]
    assert float(line.split()[-1]) == 1
    with svc.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(usage_events)).scalar_one() == 5
    # An operator finds it, with the reason and the record whole: by the admin API ...
    r = httpx.get(srv.url + "/admin/dead-letters", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    (dead,) = r.json()["data"]
    assert dead["request_id"] == "req_poison" and "null" in dead["reason"].lower()
    assert dead["record"] == [{"table": "usage_events", "row": poison}]
    assert httpx.get(srv.url + "/admin/dead-letters").status_code == 401
    for limit in ("0", "²", "x", "10001"):  # "²" passes str.isdigit, not int()
        r = httpx.get(
            srv.url + "/admin/dead-letters",
            params={"limit": limit},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit", limit
    # ... and from the command line.
    config = tmp_path / "cli.yaml"
    url = svc.engine.url.render_as_string(hide_password=False)
    config.write_text(f'database: {{url: "{url}"}}\n')
    assert cli_main(["dead-letters", "--config", str(config), "--json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    assert printed["request_id"] == "req_poison" and printed["record"] == dead["record"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/keys", {"name": "team\x00a"}, "name"),
        ("/admin/orgs", {"name": "Acme\x00", "currency": "USD"}, "name"),
        ("/admin/orgs/{org}/projects", {"name": "p\x00"}, "name"),
        ("/admin/orgs/{org}/topups", {"amount": "1.00", "memo": "m\x00"}, "memo"),
    ],
    ids=["key-name", "org-name", "project-name", "memo"],
)
def test_an_admin_string_with_a_nul_byte_is_a_400(
    gw: tuple[ThreadServer, Services, str], path: str, body: dict[str, Any], param: str
) -> None:
    """PostgreSQL refuses a NUL in text: caught at the edge, not a 500 from the insert."""
    srv, svc, _ = gw
    org = svc.ledger.create_org("nul test", "USD")
    r = httpx.post(
        srv.url + path.format(org=org.id),
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
