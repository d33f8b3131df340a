"""GET /v1/usage, /metrics, /dashboard and `tokenomy usage` over a history made by the real
pipeline (simulated vendors, real pricing and ledger), checked against the raw events."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_KEY
from tests.servers import ThreadServer
from tokenomy.analytics.insights import milestones, reference_cost
from tokenomy.analytics.metrics import Metrics
from tokenomy.analytics.rollup import DAY, minutes_kept_from
from tokenomy.api import usage_routes
from tokenomy.app import app_for
from tokenomy.billing.catalog import PriceBook
from tokenomy.cli.demo_history import seed_history
from tokenomy.config import parse_config
from tokenomy.services import Services, build_services
from tokenomy.store.schema import usage_events

METRICS_TOKEN = "tk-metrics-test-token"
HISTORY_DAYS = 35
#: Noon UTC yesterday: the seeded history ends here. The live calls the tests add land
#: on a later day than the history's last, wherever the clock stands (a run that crosses
#: midnight included), so every window below reaches to the end of the current day.
NOW_MS = int(time.time() * 1000) // DAY * DAY + DAY // 2 - DAY


def analytics_yaml(sim_url: str, db_url: str) -> str:
    """Every vendor is the simulator under the vendor's own name (and home country)."""
    v = f'dialect: openai, base_url: "{sim_url}/v1", auth: none'
    return f"""
database: {{url: "{db_url}"}}
writer: {{flush_interval_ms: 20}}
vendors:
  deepseek: {{{v}}}
  qwen: {{{v}}}
  zhipu: {{{v}}}
  moonshot: {{{v}}}
  openai: {{{v}}}
  mistral: {{{v}, country: FR, name: Mistral}}
  anthropic: {{dialect: anthropic, base_url: "{sim_url}/v1", auth: none}}
models:
  - {{name: deepseek-chat, deployments: [{{vendor: deepseek, model: deepseek-chat, price: deepseek/deepseek-flash, region: cn-east}}]}}
  - {{name: qwen3.5-plus, deployments: [{{vendor: qwen, model: qwen3.5-plus}}]}}
  - {{name: glm-5, deployments: [{{vendor: zhipu, model: glm-5}}]}}
  - {{name: kimi-k2.6, deployments: [{{vendor: moonshot, model: kimi-k2.6}}]}}
  - {{name: gpt-5.4-mini, deployments: [{{vendor: openai, model: gpt-5.4-mini, region: us-east}}]}}
  - {{name: claude-sonnet-4-6, deployments: [{{vendor: anthropic, model: claude-sonnet-4-6}}]}}
  - {{name: mistral-small, deployments: [{{vendor: mistral, model: mistral-small, price: openai/gpt-5-mini}}]}}
"""


@dataclass
class AnalyticsGateway:
    server: ThreadServer
    services: Services
    metrics: Metrics
    config_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    def events(self) -> list[dict[str, Any]]:
        self.server.call(self.services.usage_writer.flush())
        with self.services.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(usage_events))]

    def get(self, path: str, key: str = ADMIN_KEY, **params: Any) -> httpx.Response:
        self.server.call(self.services.usage_writer.flush())
        return httpx.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


def start_analytics_gateway(sim_url: str, tmp: Path, days: int = HISTORY_DAYS) -> AnalyticsGateway:
    db = f"sqlite:///{tmp / 'analytics.db'}"
    text = analytics_yaml(sim_url, db)
    cfg_path = tmp / "analytics.yaml"
    cfg_path.write_text(text)
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY, "TOKENOMY_METRICS_TOKEN": METRICS_TOKEN}
    svc = build_services(parse_config(text, str(cfg_path)), env)
    holder: dict[str, Metrics] = {}

    def make_app() -> Any:
        app = app_for(svc, rollup_interval_s=0.5)
        holder["m"] = app[usage_routes.METRICS]
        return app

    srv = ThreadServer(make_app).start()
    srv.call(seed_history(days, svc, calls_per_day=40, seed=3, now_ms=NOW_MS), timeout=300)
    return AnalyticsGateway(srv, svc, holder["m"], cfg_path)


@pytest.fixture(scope="module")
def agw(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalyticsGateway]:
    gw = start_analytics_gateway(sim.url, tmp_path_factory.mktemp("analytics"))
    yield gw
    gw.server.stop()


def day_of(ms: int) -> int:
    return ms - ms % DAY


def today_ms() -> int:
    return day_of(int(time.time() * 1000))


def window(days: int = HISTORY_DAYS) -> dict[str, Any]:
    """The history's ``days`` last days, and every day since (the live calls' included)."""
    return {"start": day_of(NOW_MS) - (days - 1) * DAY, "end": today_ms() + DAY}


def test_history_went_through_the_pipeline(agw: AnalyticsGateway) -> None:
    ev = agw.events()
    assert len(ev) > 300
    days = {day_of(e["ts_ms"]) for e in ev}
    assert len(days) == HISTORY_DAYS  # spread over the past, one bucket per day
    assert {e["vendor"] for e in ev} >= {"deepseek", "qwen", "openai", "anthropic"}
    priced = [e for e in ev if e["status"] == "ok"]
    assert all(e["cost_nanos"] > 0 and e["price_version"] for e in priced)
    assert {e["currency"] for e in priced} == {"USD", "CNY"}
    assert {e["status"] for e in ev} >= {"ok", "error"}


def test_admin_usage_by_model_and_vendor_matches_raw_events(agw: AnalyticsGateway) -> None:
    r = agw.get("/v1/usage", granularity="day", group_by="model,vendor,country", **window())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "usage" and body["scope"] == "all"
    expect: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    cost: dict[tuple[int, str, str, str], int] = defaultdict(int)
    for e in agw.events():
        k = (day_of(e["ts_ms"]), e["model"], e["vendor"] or "")
        expect[k][0] += 1
        expect[k][1] += e["input_tokens"] + e["output_tokens"]
        expect[k][2] += e["status"] != "ok"
        if e["currency"]:
            cost[(*k, e["currency"])] += e["cost_nanos"]
    got = {(d["bucket_ms"], d["model"], d["vendor"]): d for d in body["data"]}
    assert set(got) == set(expect)
    for k, (n, tokens, errors) in expect.items():
        assert [got[k]["requests"], got[k]["total_tokens"], got[k]["errors"]] == [n, tokens, errors]
    for (d, m, v, cur), nanos in cost.items():
        assert got[(d, m, v)]["cost_nanos"].get(cur, 0) == nanos
    countries = {d["vendor"]: d["country"] for d in body["data"]}
    assert countries["deepseek"] == "CN" and countries["openai"] == "US"
    assert countries["mistral"] == "FR"


def test_a_key_sees_only_its_own_usage(agw: AnalyticsGateway) -> None:
    secret, rec = agw.services.keys.create("own-view", org_id="org_hist_initech")
    agw.services.key_cache.put(secret, rec)
    for _ in range(3):
        r = httpx.post(
            agw.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    mine = [e for e in agw.events() if e["key_id"] == rec.id]
    assert len(mine) == 3
    r = agw.get("/v1/usage", key=secret, view="summary", **window())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "key"
    assert body["data"]["requests"] == 3
    assert body["data"]["total_tokens"] == sum(e["input_tokens"] + e["output_tokens"] for e in mine)
    # The admin may filter to that key; the key cannot widen its view.
    r = agw.get("/v1/usage", view="summary", key_id=rec.id, **window())
    assert r.json()["data"]["requests"] == 3
    r = agw.get("/v1/usage", key=secret, view="summary", key_id="someone-else", **window())
    assert r.json()["data"]["requests"] == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"granularity": "fortnight"}, "granularity"),
        ({"group_by": "model,colour"}, "group_by"),
        ({"start": "last tuesday"}, "start"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "start"),
        ({"view": "horoscope"}, "view"),
        ({"view": "top_models", "limit": "0"}, "limit"),
        ({"view": "share", "by": "planet"}, "by"),
        ({"view": "savings", "reference": "nobody/nothing"}, "reference"),
    ],
)
def test_bad_parameters_get_openai_errors(
    agw: AnalyticsGateway, params: dict[str, str], param: str
) -> None:
    r = agw.get("/v1/usage", **params)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert err["message"]


def test_minute_views_stop_where_minutes_were_pruned(agw: AnalyticsGateway) -> None:
    """The roll-up worker prunes minute buckets older than two days; asking for minutes
    before that is an error naming the parameter, not a silently empty answer."""
    engine = agw.services.engine
    deadline = time.monotonic() + 30
    while minutes_kept_from(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = minutes_kept_from(engine)
    assert 0 < kept <= int(time.time() * 1000) - 2 * DAY
    r = agw.get("/v1/usage", granularity="minute", days=7)
    assert r.status_code == 400 and r.json()["error"]["param"] == "start"
    assert "granularity" in r.json()["error"]["message"]
    ev = agw.events()
    recent = [e for e in ev if e["ts_ms"] >= kept]
    end = max(e["ts_ms"] for e in ev) + 1
    r = agw.get("/v1/usage", granularity="minute", start=kept, end=end)
    assert r.status_code == 200
    assert sum(row["requests"] for row in r.json()["data"]) == len(recent) > 0
    while True:  # hours are all still there
        today = today_ms()
        r = agw.get("/v1/usage", granularity="hour", days=7)
        if today == today_ms():  # not asked across midnight, which moves the 7 days
            break
    assert sum(row["requests"] for row in r.json()["data"]) == sum(
        1 for e in ev if e["ts_ms"] >= today - 6 * DAY
    )


def test_usage_needs_a_key(agw: AnalyticsGateway) -> None:
    r = httpx.get(agw.url + "/v1/usage")
    assert r.status_code == 401 and r.json()["error"]["type"]
    r = agw.get("/v1/usage", key="tk-not-a-key")
    assert r.status_code == 401


def test_rankings_share_and_growth(agw: AnalyticsGateway) -> None:
    r = agw.get("/v1/usage", view="top_models", period="week", limit=3, **window())
    rows = r.json()["data"]
    weeks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        weeks[row["bucket_ms"]].append(row)
    for ranked in weeks.values():
        named = [x for x in ranked if x["model"] != "other"]
        assert len(named) <= 3 and [x["rank"] for x in named] == list(range(1, len(named) + 1))
        assert [x["tokens"] for x in named] == sorted((x["tokens"] for x in named), reverse=True)
        assert abs(sum(x["share"] for x in ranked) - 1) < 1e-9
    assert any(x["model"] == "other" for x in rows)  # seven models, top three shown
    share = agw.get("/v1/usage", view="share", by="country", **window()).json()["data"]
    by = {s["name"]: s for s in share}
    assert set(by) >= {"CN", "US", "FR"} and abs(sum(s["share"] for s in share) - 1) < 1e-9
    ev = agw.events()
    assert by["CN"]["tokens"] == sum(
        e["input_tokens"] + e["output_tokens"]
        for e in ev
        if e["vendor"] in ("deepseek", "qwen", "zhipu", "moonshot")
    )
    g = agw.get("/v1/usage", view="growth", end=NOW_MS).json()["data"]
    daily = {d["day_ms"]: d["tokens"] for d in g["daily"]}
    assert g["last_day_tokens"] == daily[g["last_day_ms"]]
    assert g["doubling_days"] is not None and 3 < g["doubling_days"] < 60  # seeded 8x in 35 days
    if g["previous_day_tokens"]:
        assert g["day_over_day"] == pytest.approx(
            g["last_day_tokens"] / g["previous_day_tokens"] - 1
        )


def test_savings_against_opus(agw: AnalyticsGateway) -> None:
    body = agw.get("/v1/usage", view="savings", **window()).json()["data"]
    assert body["reference"] == "anthropic/claude-opus-4-6" and body["currency"] == "USD"
    assert body["reference_nanos"] > body["actual_nanos"] > 0
    assert body["saved_nanos"] == body["reference_nanos"] - body["actual_nanos"]
    assert body["ratio"] > 3  # Opus lists at $5/$25 per million; these models far less
    # One model's reference cost, recomputed from its raw events.
    sums = dict.fromkeys(
        (
            "input_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        ),
        0,
    )
    version = PriceBook.load().lookup("anthropic", "claude-opus-4-6", _dt(NOW_MS))
    expect = 0
    per_day: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(sums, 0))
    for e in agw.events():
        if e["model"] == "gpt-5.4-mini" and e["currency"]:
            for k in sums:
                per_day[day_of(e["ts_ms"])][k] += e[k]
    expect = sum(reference_cost(version, t) for t in per_day.values())
    got = next(m for m in body["by_model"] if m["model"] == "gpt-5.4-mini")
    assert got["reference_nanos"] == expect
    # Another reference: Haiku is cheaper than Opus.
    haiku = agw.get("/v1/usage", view="savings", reference="anthropic/claude-haiku-4-5", **window())
    assert haiku.json()["data"]["reference_nanos"] < body["reference_nanos"]


def _dt(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC)


def test_milestones_match_cumulative_raw_tokens(agw: AnalyticsGateway) -> None:
    agw.get("/v1/usage", view="summary")  # rolls up
    ev = agw.events()
    total = sum(
        e["input_tokens"] + e["output_tokens"] for e in ev if e["org_id"] == "org_hist_acme"
    )
    threshold = total // 2
    rows = milestones(agw.services.engine, thresholds=(threshold, total * 10))
    acme = next(o for o in rows if o["org_id"] == "org_hist_acme")
    assert acme["total_tokens"] == total
    running, crossed = 0, None
    for e in sorted((e for e in ev if e["org_id"] == "org_hist_acme"), key=lambda e: e["ts_ms"]):
        running += e["input_tokens"] + e["output_tokens"]
        if crossed is None and running >= threshold:
            crossed = day_of(e["ts_ms"])
    assert acme["crossed"] == {str(threshold): crossed, str(total * 10): None}
    api = agw.get("/v1/usage", view="milestones").json()["data"]
    assert {o["org_id"] for o in api} >= {"org_hist_acme", "org_hist_lotus"}
    assert set(api[0]["crossed"]) == {"1000000000", "1000000000000"}


def test_latency_view_has_percentiles(agw: AnalyticsGateway) -> None:
    rows = agw.get(
        "/v1/usage", view="latency", granularity="week", group_by="model", **window()
    ).json()["data"]
    assert rows
    for r in rows:
        lat = r["latency_ms"]
        assert lat["p50"] is not None and lat["p50"] <= lat["p90"] <= lat["p99"]
    day = agw.get("/v1/usage", view="latency", granularity="day", **window()).json()["data"]
    assert sum(r["requests"] for r in day) == len(agw.events())


def scrape(agw: AnalyticsGateway, token: str = METRICS_TOKEN) -> httpx.Response:
    return httpx.get(agw.url + "/metrics", headers={"Authorization": f"Bearer {token}"})


def test_metrics_need_the_metrics_token_or_the_admin_key(agw: AnalyticsGateway) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {_house_key(agw)}"},
    ):
        r = httpx.get(agw.url + "/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert "tokenomy_" not in r.text
    assert scrape(agw).status_code == 200
    assert scrape(agw, ADMIN_KEY).status_code == 200
    assert "tokenomy_requests_total" in scrape(agw).text


def test_metrics_are_prometheus_text(agw: AnalyticsGateway) -> None:
    before = scrape(agw)
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain; version=0.0.4")
    r = httpx.post(
        agw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {_house_key(agw)}"},
        json={"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "count me"}]},
        timeout=30,
    )
    assert r.status_code == 200
    text = scrape(agw).text
    samples = _samples(text)
    k = 'tokenomy_requests_total{model="gpt-5.4-mini",vendor="openai",status="ok"}'
    assert samples[k] == _samples(before.text).get(k, 0) + 1
    assert samples['tokenomy_tokens_total{model="gpt-5.4-mini",vendor="openai",type="output"}'] > 0
    assert any(s.startswith("tokenomy_spend_nanos_total{") for s in samples)
    inf = samples[
        'tokenomy_request_duration_seconds_bucket{model="gpt-5.4-mini",vendor="openai",le="+Inf"}'
    ]
    assert (
        inf
        == samples['tokenomy_request_duration_seconds_count{model="gpt-5.4-mini",vendor="openai"}']
    )
    assert (
        'tokenomy_time_to_first_token_seconds_bucket{model="gpt-5.4-mini",vendor="openai",le="0.005"}'
        in samples
    )
    assert samples["tokenomy_queue_depth"] == 0
    assert samples["tokenomy_ledger_holds_total"] >= samples["tokenomy_ledger_settles_total"] > 0
    for name in (
        "tokenomy_requests_total",
        "tokenomy_request_duration_seconds",
        "tokenomy_writer_pending_rows",
    ):
        assert f"# TYPE {name} " in text
    assert any(s.startswith("tokenomy_upstream_errors_total{") for s in samples)


def _house_key(agw: AnalyticsGateway) -> str:
    secret, rec = agw.services.keys.create("metrics")
    agw.services.key_cache.put(secret, rec)
    return secret


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_dashboard_login_and_views(agw: AnalyticsGateway) -> None:
    with httpx.Client(base_url=agw.url, follow_redirects=False, timeout=30) as c:
        r = c.get("/dashboard")
        assert r.status_code == 200 and "<form" in r.text and 'name="key"' in r.text
        assert "all organisations" not in r.text
        r = c.post("/dashboard/login", data={"key": "wrong"})
        assert r.status_code == 401 and "not accepted" in r.text
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY, "next": "days=14"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard?days=14"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
        assert f"Max-Age={usage_routes.SESSION_TTL_S}" in cookie
        assert ADMIN_KEY not in cookie and ADMIN_KEY not in c.cookies[usage_routes.COOKIE]
        r = c.get("/dashboard?days=14")
        assert r.status_code == 200 and "all organisations" in r.text
        assert r.text.count('data-chart="') == 8 and "Top organisations" in r.text
        assert "No batches in this range" in r.text  # the batch panel, empty here
        assert "Acme Robotics" in r.text  # names, not ids
        assert c.get("/dashboard/live").json() == {"queue_depth": 0, "writer_pending": 0}
        c.get("/dashboard/logout")
        c.cookies.clear()
        assert c.get("/dashboard/live").status_code == 401
    secret, rec = agw.services.keys.create("dash", org_id="org_hist_globex")
    agw.services.key_cache.put(secret, rec)
    with httpx.Client(base_url=agw.url, timeout=30, follow_redirects=True) as c:
        r = c.post("/dashboard/login", data={"key": secret})
        assert r.status_code == 200 and "Top organisations" not in r.text
        assert f"key {rec.id}" in r.text


def test_a_login_link_does_not_sign_in(agw: AnalyticsGateway) -> None:
    """``GET /dashboard?key=...`` (a key in the request line, or a link planted by someone
    else: login CSRF) shows the sign-in form and sets no session."""
    with httpx.Client(base_url=agw.url, follow_redirects=False, timeout=30) as c:
        r = c.get("/dashboard", params={"key": "\x00", "days": "14"})
        assert r.status_code == 400 and "set-cookie" not in r.headers  # a NUL: bad input
        for key in (ADMIN_KEY, "wrong", ""):
            r = c.get("/dashboard", params={"key": key, "days": "14"})
            assert r.status_code == 200 and 'name="key"' in r.text, key
            assert "set-cookie" not in r.headers and "all organisations" not in r.text
            assert ADMIN_KEY not in r.text
            # The form carries the view's other parameters, never the key.
            assert 'name="next" value="days=14"' in r.text
        assert not c.cookies
        assert c.get("/dashboard/live").status_code == 401


def test_a_cross_site_sign_in_is_refused(agw: AnalyticsGateway) -> None:
    """A form on another site posting its owner's key would sign the victim's browser in
    to the attacker's account: the browser's Origin and Sec-Fetch-Site headers give it
    away."""
    with httpx.Client(base_url=agw.url, follow_redirects=False, timeout=30) as c:
        for headers in (
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.example"},
        ):
            r = c.post("/dashboard/login", data={"key": ADMIN_KEY}, headers=headers)
            assert r.status_code == 403 and "set-cookie" not in r.headers, headers
        same = {"Origin": agw.url, "Sec-Fetch-Site": "same-origin"}
        r = c.post("/dashboard/login", data={"key": ADMIN_KEY, "next": "key=x&days=3"},
                   headers=same)  # fmt: skip
        assert r.status_code == 303 and r.headers["location"] == "/dashboard?days=3"
        assert "set-cookie" in r.headers


def test_session_tokens_are_signed_and_expire() -> None:
    secret = usage_routes.session_secret(ADMIN_KEY)
    assert secret == usage_routes.session_secret(ADMIN_KEY)  # every replica agrees
    assert secret != usage_routes.session_secret(ADMIN_KEY + "x")
    assert usage_routes.session_secret(None) != usage_routes.session_secret(None)
    now = 1_800_000_000.0
    token = usage_routes.issue_session(secret, "key:key_abc", now, ttl_s=60)
    assert usage_routes.read_session(secret, token, now) == "key:key_abc"
    assert usage_routes.read_session(secret, token, now + 59) == "key:key_abc"
    assert usage_routes.read_session(secret, token, now + 60) is None  # expired
    subject, expires, sig = token.split(".")
    for forged in (
        f"key:key_other.{expires}.{sig}",  # someone else's key
        f"admin.{expires}.{sig}",  # promoted to admin
        f"{subject}.{int(expires) + 3600}.{sig}",  # extended
        f"{subject}.{expires}.{sig[:-2]}",
        f"{subject}.{expires}.{sig}é",
        f"{subject}.{expires}",
        "",
    ):
        assert usage_routes.read_session(secret, forged, now) is None, forged
    other = usage_routes.session_secret("another admin key")
    assert usage_routes.read_session(other, token, now) is None
    with pytest.raises(ValueError):
        usage_routes.issue_session(secret, "key:a.b", now)


def test_dashboard_session_ends_when_its_key_is_revoked(agw: AnalyticsGateway) -> None:
    secret, rec = agw.services.keys.create("revoked soon", org_id="org_hist_acme")
    agw.services.key_cache.put(secret, rec)
    with httpx.Client(base_url=agw.url, timeout=30, follow_redirects=False) as c:
        r = c.post("/dashboard/login", data={"key": secret})
        assert r.status_code == 303
        token = c.cookies[usage_routes.COOKIE]
        assert secret not in token and secret not in r.headers["set-cookie"]
        assert token.startswith(f"key:{rec.id}.")
        r = c.get("/dashboard")
        assert r.status_code == 200 and f"key {rec.id}" in r.text
        assert c.get("/dashboard/live").status_code == 200
        # Revoked in the database only (as another replica or the CLI would): the
        # gateway's key cache still holds the key, yet the session ends at once.
        assert agw.services.keys.revoke(rec.id)
        assert agw.services.key_cache.lookup(secret) is not None
        r = c.get("/dashboard")
        assert r.status_code == 401 and "session has ended" in r.text
        assert f"key {rec.id}" not in r.text
        live = httpx.get(agw.url + "/dashboard/live", cookies={usage_routes.COOKIE: token})
        assert live.status_code == 401
    # A tampered or expired cookie is refused too, and a forged admin one.
    sess = usage_routes.session_secret(ADMIN_KEY)
    forged = token.replace(rec.id, "key_someone_else")
    expired = usage_routes.issue_session(sess, "admin", time.time() - 2 * 86400)
    wrong = usage_routes.issue_session(b"not the server's secret", "admin", time.time())
    for bad in (forged, expired, wrong, ADMIN_KEY):
        r = httpx.get(agw.url + "/dashboard", cookies={usage_routes.COOKIE: bad}, timeout=30)
        assert r.status_code == 401 and "all organisations" not in r.text, bad
    good = usage_routes.issue_session(sess, "admin", time.time())
    r = httpx.get(agw.url + "/dashboard", cookies={usage_routes.COOKIE: good}, timeout=30)
    assert r.status_code == 200 and "all organisations" in r.text


def test_cli_usage_formats(agw: AnalyticsGateway, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenomy.cli.main import main

    agw.server.call(agw.services.usage_writer.flush())
    w = window()
    args = ["usage", "-c", str(agw.config_path), "--start", str(w["start"]), "--end", str(w["end"])]
    assert main([*args, "--group-by", "vendor", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ev = agw.events()
    assert sum(r["requests"] for r in out["data"]) == len(ev)
    assert main([*args, "--group-by", "vendor", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bucket,vendor,requests,errors,input_tokens")
    assert sum(int(line.split(",")[2]) for line in lines[1:]) == len(ev)
    assert (
        main(
            [
                "usage",
                "share",
                "-c",
                str(agw.config_path),
                "--by",
                "country",
                "--start",
                str(w["start"]),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["name", "tokens", "requests"] and "CN" in table
    assert main(["usage", "savings", "-c", str(agw.config_path), "--start", str(w["start"])]) == 0
    assert "reference" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--granularity", "fortnight"])
    assert "--granularity" in capsys.readouterr().err


def test_top_models_scoped_to_an_org_or_key_name_every_model(agw: AnalyticsGateway) -> None:
    secret, rec = agw.services.keys.create("ranked-view", org_id="org_hist_initech")
    agw.services.key_cache.put(secret, rec)
    r = httpx.post(
        agw.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    for params in ({"key": secret}, {"org_id": "org_hist_initech"}):
        deadline = time.monotonic() + 10
        while True:
            r = agw.get("/v1/usage", view="top_models", **params, **window())
            assert r.status_code == 200, r.text
            rows = [x for x in r.json()["data"] if x["rank"] is not None]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows, params
        assert all(x["model"] for x in rows), rows
