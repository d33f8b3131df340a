"""model "auto" through the running gateway, with the simulator standing in for the pool."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, Gateway, make_config, sim_faults
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.routing.learned import prompt_text
from tokenomy.services import build_services

#: Three RouterBench models stand in at three price points (USD per million tokens):
#: Opus 5/25, MiniMax 0.30/1.20, sim-small 0.10/0.40.
POOL = """
  - name: auto-dear
    deployments: [{vendor: sim, model: auto-dear, price: anthropic/claude-opus-4-6}]
  - name: auto-mid
    deployments: [{vendor: sim, model: auto-mid, price: minimax/MiniMax-M2.5}]
  - name: auto-cheap
    deployments: [{vendor: sim, model: auto-cheap, price: sim/sim-small, capabilities: [stream]}]
router:
  fallbacks: 1
  pool:
    gpt-4-1106-preview: auto-dear
    zero-one-ai/Yi-34B-Chat: auto-mid
    mistralai/mistral-7b-chat: auto-cheap
"""
PRICES = {"auto-dear": (5, 25), "auto-mid": (0.30, 1.20), "auto-cheap": (0.10, 0.40)}
ARC = (
    "What is the mass of a carbon atom that has 6 protons, 7 neutrons, and 6 electrons?\n"
    "A) 19\nB) 7\nC) 13\nD) 6\n"
    'Print only a single choice  from "A" or "B" or "C" or "D" without explanation.\nAnswer:'
)
MSGS = [{"role": "user", "content": ARC}]


@pytest.fixture(scope="module")
def auto_gw(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("auto")
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY}
    svc = build_services(make_config(sim.url, tmp, extra=POOL), env)
    srv = ThreadServer(lambda: app_for(svc)).start()
    secret, rec = svc.keys.create("auto")
    svc.key_cache.put(secret, rec)
    yield Gateway(srv, svc, secret, sim.url)
    srv.stop()


def client(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key or gw.key, max_retries=0)


def router_header(h: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in h.split("; "))


def expected(gw: Gateway, bar: float, allowed: list[str] | None = None) -> list[str]:
    """The pool's configured names in the router's order for the test prompt."""
    auto = gw.services.pipeline.auto
    assert auto is not None
    names = {rm: r.name for rm, r in auto.routes.items()}
    d = auto.learned.decide(prompt_text({"messages": MSGS}), bar, allowed or list(names))
    return [names[s.model] for s in d.ranked]


def test_auto_serves_the_pick_through_the_sdk_and_bills_its_price(auto_gw: Gateway) -> None:
    c = client(auto_gw)
    for bar in (0.0, 1.0):
        raw = c.chat.completions.with_raw_response.create(
            model="auto",
            messages=MSGS,
            max_tokens=16,
            extra_body={"provider": {"min_quality": bar}},
        )
        resp = raw.parse()
        pick = expected(auto_gw, bar)[0]
        info = router_header(raw.headers["x-tokenomy-router"])
        assert info["model"] == pick and resp.model == pick
        assert 0 < float(info["predicted_quality"]) < 1 and info["bar"] == f"{bar:.3f}"
        assert info["considered"].split(",")[0].startswith(pick + ":")
        assert raw.headers["x-tokenomy-deployment"] == f"sim/{pick}"
        [ev] = auto_gw.wait_events(1, request_id=raw.headers["x-request-id"])
        assert ev["model"] == pick and ev["deployment"] == f"sim/{pick}"
        pin, pout = PRICES[pick]
        want = round((ev["input_tokens"] * pin + ev["output_tokens"] * pout) * 1000)
        assert ev["cost_nanos"] == want
    # The highest bar buys the model predicted best on a science question; the lowest not.
    assert expected(auto_gw, 1.0)[0] == "auto-dear"
    assert expected(auto_gw, 0.0)[0] != "auto-dear"


def test_bar_from_header_and_alias_and_bad_bars_are_400s(auto_gw: Gateway) -> None:
    hdr = {"Authorization": f"Bearer {auto_gw.key}"}
    body: dict[str, Any] = {"model": "tokenomy/auto", "messages": MSGS, "max_tokens": 8}
    r = httpx.post(
        auto_gw.base_url + "/chat/completions",
        json=body,
        headers={**hdr, "X-Tokenomy-Min-Quality": "1"},
    )
    assert r.status_code == 200, r.text
    assert router_header(r.headers["x-tokenomy-router"])["model"] == "auto-dear"
    r = httpx.post(
        auto_gw.base_url + "/chat/completions",
        json=body,
        headers={**hdr, "X-Tokenomy-Min-Quality": "lots"},
    )
    assert r.status_code == 400 and "X-Tokenomy-Min-Quality" in r.json()["error"]["message"]
    r = httpx.post(
        auto_gw.base_url + "/chat/completions",
        json={**body, "provider": {"min_quality": 1.5}},
        headers=hdr,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "provider.min_quality"
    # Without a pool entry, the default bar: the packaged router's (a cheap pick here).
    r = httpx.post(auto_gw.base_url + "/chat/completions", json=body, headers=hdr)
    assert r.status_code == 200
    bar = float(router_header(r.headers["x-tokenomy-router"])["bar"])
    assert router_header(r.headers["x-tokenomy-router"])["model"] == expected(auto_gw, bar)[0]


def test_a_key_limited_to_some_models_gets_auto_among_them_only(auto_gw: Gateway) -> None:
    key = auto_gw.new_key(models=["auto-cheap"])
    raw = client(auto_gw, key).chat.completions.with_raw_response.create(
        model="auto", messages=MSGS, max_tokens=8, extra_body={"provider": {"min_quality": 1}}
    )
    assert router_header(raw.headers["x-tokenomy-router"])["model"] == "auto-cheap"
    with pytest.raises(openai.PermissionDeniedError):
        client(auto_gw, auto_gw.new_key(models=["sim-small"])).chat.completions.create(
            model="auto", messages=MSGS, max_tokens=8
        )


def test_the_hold_covers_the_models_auto_may_still_pick_not_the_whole_pool(
    auto_gw: Gateway,
) -> None:
    # 1000 output tokens: Opus's worst case is about 2.5 cents, the others' a tenth of a cent.
    org = auto_gw.new_org(5_000_000)  # half a cent
    c = client(auto_gw, auto_gw.new_key(org_id=org))
    low = expected(auto_gw, 0.0)[:2]
    assert "auto-dear" not in low  # the pick and its one fallback are both cheap
    r = c.chat.completions.create(
        model="auto", messages=MSGS, max_tokens=1000, extra_body={"provider": {"min_quality": 0}}
    )
    assert r.model == low[0]
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(
            model="auto",
            messages=MSGS,
            max_tokens=1000,
            extra_body={"provider": {"min_quality": 1}},
        )
    assert e.value.status_code == 402


def test_a_failing_pick_falls_back_to_the_next_model_which_is_billed(auto_gw: Gateway) -> None:
    order = expected(auto_gw, 1.0)
    sim_faults(auto_gw.sim_url, order[0], ["503"])
    raw = client(auto_gw).chat.completions.with_raw_response.create(
        model="auto", messages=MSGS, max_tokens=8, extra_body={"provider": {"min_quality": 1}}
    )
    info = router_header(raw.headers["x-tokenomy-router"])
    assert info["model"] == order[0] and info["served"] == order[1]
    assert raw.parse().model == order[1]
    [ev] = auto_gw.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["model"] == order[1] and ev["attempts"] == 2


def test_capability_filters_skip_a_pick_that_cannot_serve(auto_gw: Gateway) -> None:
    # auto-cheap has no tools: a tools request at the lowest bar goes to the next model.
    order = expected(auto_gw, 0.0)
    assert order[0] == "auto-cheap"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    raw = client(auto_gw).chat.completions.with_raw_response.create(
        model="auto",
        messages=MSGS,
        max_tokens=8,
        tools=tools,  # type: ignore[arg-type]
        extra_body={"provider": {"min_quality": 0}},
    )
    assert raw.parse().model == order[1]


def test_streaming_auto_carries_the_router_header(auto_gw: Gateway) -> None:
    with client(auto_gw).chat.completions.with_streaming_response.create(
        model="auto", messages=MSGS, max_tokens=8, stream=True
    ) as resp:
        assert resp.headers["x-tokenomy-router"].startswith("model=")
        chunks = list(resp.parse())
    assert chunks and chunks[0].model in PRICES


def test_the_default_config_pools_all_eleven_routerbench_models_at_their_prices() -> None:
    from tokenomy.config import load_config
    from tokenomy.gateway.registry import build_registry
    from tokenomy.services import build_auto

    cfg = load_config()
    auto = build_auto(cfg, build_registry(cfg, env={}))
    assert auto is not None and len(auto.routes) == 11
    assert set(auto.routes) == set(auto.learned.models)
    assert auto.routes["gpt-4-1106-preview"].deployments[0].id == "sim/sim-rb-gpt-4-1106-preview"


def test_auto_through_the_anthropic_sdk_names_the_served_model(auto_gw: Gateway) -> None:
    import anthropic

    claude = anthropic.Anthropic(base_url=auto_gw.url, api_key=auto_gw.key, max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="auto",
        max_tokens=8,
        messages=[{"role": "user", "content": ARC}],
        extra_headers={"X-Tokenomy-Min-Quality": "1"},
    )
    assert raw.parse().model == "auto-dear"
    assert router_header(raw.headers["x-tokenomy-router"])["model"] == "auto-dear"


def test_models_list_names_auto_for_keys_that_may_use_its_pool(auto_gw: Gateway) -> None:
    listed = {m.id: m for m in client(auto_gw).models.list()}
    assert "auto" in listed and "auto-dear" in listed
    card = client(auto_gw).models.retrieve("auto")
    assert card.id == "auto"
    assert client(auto_gw).models.retrieve("tokenomy/auto").id == "tokenomy/auto"
    # A key allowed only models outside the pool cannot use auto: it is not listed.
    other = client(auto_gw, auto_gw.new_key(models=["sim-small"]))
    assert "auto" not in {m.id for m in other.models.list()}
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve("auto")
