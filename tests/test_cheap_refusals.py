"""A refused request costs less than an admitted one: no refusal tokenizes a large body,
and the exact count a near-miss needs runs off the event loop."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway
from tokenomy.api import lean_server
from tokenomy.api.lean_guards import Drain
from tokenomy.api.lean_site import LeanSite
from tokenomy.core.call import Call
from tokenomy.core.tokencount import TokenCounter
from tokenomy.ledger import broke_orgs
from tokenomy.ledger.accounts import Scope
from tokenomy.ledger.broke_orgs import BROKE_DELAY_S, REFUSALS_PER_S
from tokenomy.ledger.live import Shortfall

BIG = "lorem ipsum dolor sit amet " * 2_300  # ~62 KB, under the test gateway's body limit


@pytest.fixture
def counted(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the threads the gateway's tokenizer ran on, while the test runs."""
    threads: list[str] = []
    counter: TokenCounter = gateway.services.counter
    for name in ("count_text", "count_messages", "count_anthropic_request"):
        real = getattr(counter, name)

        def spy(*a: Any, _real: Any = real, **kw: Any) -> Any:
            threads.append(threading.current_thread().name)
            return _real(*a, **kw)

        monkeypatch.setattr(counter, name, spy)
    yield threads


def ask(
    gateway: Gateway, key: str, content: str, path: str = "/chat/completions"
) -> httpx.Response:
    if path == "/messages":
        body: dict[str, Any] = {"model": "ds-reasoner", "max_tokens": 10}
    else:
        body = {"model": "ds-reasoner", "max_tokens": 10}
    body["messages"] = [{"role": "user", "content": content}]
    return httpx.post(
        gateway.base_url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


@pytest.mark.parametrize("path", ["/chat/completions", "/messages"])
def test_an_empty_balance_refuses_a_large_prompt_without_tokenizing_it(
    gateway: Gateway, counted: list[str], path: str
) -> None:
    key = gateway.new_key(org_id=gateway.new_org(0))
    r = ask(gateway, key, BIG, path)
    assert r.status_code == 402, r.text
    assert counted == []


def test_a_near_miss_is_counted_off_the_event_loop(gateway: Gateway, counted: list[str]) -> None:
    # Enough for the prompt's real count but not for its byte bound: counted, then served.
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    body = {
        "model": "ds-reasoner",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": BIG}],
    }
    stage = gateway.services.ledger_stage
    call = Call(
        "chat", "openai", body, "ds-reasoner", False, gateway.services.key_cache.lookup(key)
    )  # type: ignore[arg-type]
    call.route = gateway.services.registry.resolve("ds-reasoner")
    deps = gateway.services.pipeline.candidates(call)
    cur = stage.accounts.orgs[org].currency
    at = datetime.now(UTC)
    loose, _ = stage.pricer.worst(call, deps, cur, stage.pricer.prompt_bound(call), 4096, at)
    gateway.services.ledger.post("topup", org, loose // 2)
    gateway.server.call(gateway.services.refresh_accounts())
    counted.clear()
    r = ask(gateway, key, BIG)
    assert r.status_code == 200, r.text
    assert counted, "the near miss was not counted"
    assert gateway.server._thread.name not in counted[:1]  # the hold's count: off the loop


def _refused(
    gateway: Gateway, counted: list[str], key: str, status: int, **body: Any
) -> httpx.Response:
    """Send a large prompt that must be refused with ``status``: answered without the
    tokenizer ever being called for it."""
    payload: dict[str, Any] = {"model": "ds-reasoner", "max_tokens": 10}
    payload["messages"] = [{"role": "user", "content": BIG}]
    payload.update(body)
    counted.clear()
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    assert counted == [], f"a refused {status} tokenized the prompt"
    return r


def test_a_model_the_key_may_not_use_is_refused_without_tokenizing(
    gateway: Gateway, counted: list[str]
) -> None:
    _refused(gateway, counted, gateway.new_key(models=["sim-small"]), 403)


def test_a_key_whose_org_is_gone_is_refused_without_tokenizing(
    gateway: Gateway, counted: list[str]
) -> None:
    # A key bound to an org the directory does not know: 403 from the ledger stage.
    _refused(gateway, counted, gateway.new_key(org_id="org_missing_for_this_test"), 403)


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": "hot"},  # the edge's validation
        {"max_tokens": -5},
        {"model": "no-tools", "tools": [{"type": "function", "function": {"name": "f"}}]},
    ],
    ids=["bad-type", "bad-range", "no-deployment"],
)
def test_an_invalid_request_is_refused_without_tokenizing(
    gateway: Gateway, counted: list[str], body: dict[str, Any]
) -> None:
    _refused(gateway, counted, gateway.new_key(), 400, **body)


def test_a_rate_limited_request_is_refused_without_tokenizing(
    gateway: Gateway, counted: list[str]
) -> None:
    # The model "limited-refusals" admits 3 requests a minute (a limit of its own, so the
    # routing tests' "limited" keeps its three): the rest are refused with 429, each
    # decided from the prompt's byte bound.
    key = gateway.new_key()
    for _ in range(4):
        r = httpx.post(
            gateway.base_url + "/chat/completions",
            json={
                "model": "limited-refusals",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        if r.status_code == 429:
            break
        assert r.status_code == 200, r.text
    _refused(gateway, counted, key, 429, model="limited-refusals")


@pytest.mark.parametrize(
    "limit", [{"amount_nanos": 1}, {"token_limit": 5}], ids=["money", "tokens"]
)
def test_a_spent_budget_refuses_a_large_prompt_without_tokenizing(
    gateway: Gateway, counted: list[str], limit: dict[str, int]
) -> None:
    # The org has money; the key's own budget is what ran out (a Shortfall on a budget).
    key = gateway.new_key(org_id=gateway.new_org(10**12))
    key_id = gateway.services.key_cache.lookup(key).id  # type: ignore[union-attr]
    b = gateway.services.ledger.set_budget(Scope.KEY, key_id, "day", **limit)
    gateway.server.call(gateway.services.refresh_accounts())
    try:
        _refused(gateway, counted, key, 402)
    finally:
        gateway.services.ledger.delete_budget(b.id)
        gateway.server.call(gateway.services.refresh_accounts())


@pytest.mark.parametrize("path", ["/chat/completions", "/messages"])
def test_an_admitted_large_prompt_is_held_on_its_byte_bound_never_tokenized(
    gateway: Gateway, counted: list[str], path: str
) -> None:
    # Enough money for the byte bound: the hold needs no count, and the vendor's usage
    # bills it, so nothing on the way tokenizes the prompt.
    key = gateway.new_key(org_id=gateway.new_org(10**12))
    r = ask(gateway, key, BIG, path)
    assert r.status_code == 200, r.text
    assert counted == []


def _head_and_part(gateway: Gateway, key: str, wait: float = 5.0) -> bytes:
    """Send a large request's head and only the first 2 KB of its body; the answer the
    server gives without the rest (b"" if it gives none within ``wait`` seconds)."""
    body = json.dumps(
        {"model": "ds-reasoner", "max_tokens": 10, "messages": [{"role": "user", "content": BIG}]}
    ).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head + body[:2048])
        got = b""
        try:
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
    return got


def test_a_broke_org_is_refused_from_the_head_before_its_body_arrives(
    gateway: Gateway, counted: list[str]
) -> None:
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    stage = gateway.services.ledger_stage
    # The first refusal reads and parses the body, and finds the org can pay for nothing.
    assert ask(gateway, key, BIG).status_code == 402
    assert org in stage.broke
    before = stage.broke.refused
    t0 = time.monotonic()
    answer = _head_and_part(gateway, key)
    # Answered unread, and not at once: back to back, such requests come a few a second.
    assert time.monotonic() - t0 >= BROKE_DELAY_S
    assert answer.startswith(b"HTTP/1.1 402 "), answer[:200]
    err = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["type"] == "insufficient_quota" and org in err["message"]
    assert b"x-request-id" in answer.lower()
    assert stage.broke.refused == before + 1 and counted == []
    # A top-up, seen by the admin feed, makes the org's requests read and served again.
    gateway.services.ledger.post("topup", org, 10**12)
    gateway.server.call(gateway.services.refresh_accounts())
    assert org not in stage.broke
    assert ask(gateway, key, BIG).status_code == 200


def test_a_broke_org_opening_many_connections_gets_its_refusals_at_a_pace(
    gateway: Gateway,
) -> None:
    # Back to back on many connections, a broke org's large requests are answered at
    # REFUSALS_PER_S in all: its connection count does not buy it more of the loop.
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    assert ask(gateway, key, BIG).status_code == 402  # found broke
    other = gateway.new_key(org_id=gateway.new_org(0))
    assert ask(gateway, other, BIG).status_code == 402
    n = 6
    answers: list[tuple[float, bytes]] = []
    t0 = time.monotonic()

    def one() -> None:
        got = _head_and_part(gateway, key)
        answers.append((time.monotonic() - t0, got))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    # Another broke org, while the first one's requests wait: not queued behind them.
    time.sleep(0.05)
    t1 = time.monotonic()
    assert _head_and_part(gateway, other).startswith(b"HTTP/1.1 402 ")
    assert time.monotonic() - t1 < BROKE_DELAY_S + 2 / REFUSALS_PER_S
    for t in threads:
        t.join()
    assert all(a.startswith(b"HTTP/1.1 402 ") for _, a in answers), answers
    times = sorted(t for t, _ in answers)
    assert times[-1] >= BROKE_DELAY_S + (n - 1) / REFUSALS_PER_S - 0.05, times
    assert times[-1] > t1 - t0 + BROKE_DELAY_S + 2 / REFUSALS_PER_S  # still waiting then


def test_an_org_short_only_by_its_holds_in_flight_is_not_refused_from_the_head(
    gateway: Gateway,
) -> None:
    # Nothing available *now* (holds in flight take it all) is not broke: the holds may
    # settle for less. Only a balance that is gone with no hold at all is noted.
    org_id = gateway.new_org(10**9)
    stage = gateway.services.ledger_stage
    org = stage.accounts.orgs[org_id]
    at = datetime.now(UTC)
    short = Shortfall(f"the balance of org {org_id}", 10**10, 0)
    gateway.server.call(stage._note_if_broke(org, short, at))
    assert org_id not in stage.broke
    broke_id = gateway.new_org(0)
    broke = stage.accounts.orgs[broke_id]
    gateway.server.call(stage._note_if_broke(broke, Shortfall("x", 5, 0, budget=True), at))
    assert broke_id not in stage.broke  # a budget ran out, not the balance
    gateway.server.call(stage._note_if_broke(broke, Shortfall("x", 5, 0), at))
    assert broke_id in stage.broke
    stage.broke.forget([broke_id])


def test_no_head_refusal_while_a_deployment_can_be_free(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broke org may still call a model that costs nothing, and the model is in the body.
    stage = gateway.services.ledger_stage
    monkeypatch.setattr(stage, "_can_be_free", lambda at: True)
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    assert ask(gateway, key, BIG).status_code == 402
    assert org not in stage.broke
    assert _head_and_part(gateway, key, wait=1.0) == b""  # waits for the body, as for anyone


def test_the_pricer_knows_a_free_deployment(gateway: Gateway) -> None:
    pricer = gateway.services.ledger_stage.pricer
    routes = gateway.services.registry.routes
    at = datetime.now(UTC)
    priced = [d for r in routes for d in r.deployments if pricer.version(d, at) is not None]
    assert priced and not pricer.any_free(priced, at)
    unpriced = dataclasses.replace(priced[0], price_ref=("nobody", "no-such-model"))
    assert pricer.any_free([*priced, unpriced], at)


def test_a_broke_org_s_small_request_is_read_refused_and_recorded(gateway: Gateway) -> None:
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    assert ask(gateway, key, BIG).status_code == 402
    assert org in gateway.services.ledger_stage.broke
    before = gateway.services.ledger_stage.broke.refused
    assert ask(gateway, key, "hi").status_code == 402  # not from the head: recorded
    assert gateway.services.ledger_stage.broke.refused == before
    key_id = gateway.services.key_cache.lookup(key).id  # type: ignore[union-attr]
    assert len(gateway.wait_events(2, key_id=key_id)) == 2


def test_the_official_sdks_get_their_402_from_a_broke_org_either_way(gateway: Gateway) -> None:
    # Refused from the head (body still arriving) or read and refused (it came with the
    # head): the SDK sees the same 402 in its own dialect, and does not retry it.
    import anthropic
    import openai

    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    stage = gateway.services.ledger_stage
    assert ask(gateway, key, BIG).status_code == 402 and org in stage.broke
    oa = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        oa.chat.completions.create(
            model="ds-reasoner", max_tokens=10, messages=[{"role": "user", "content": BIG}]
        )
    assert e.value.status_code == 402
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "insufficient_quota"
    assert f"org {org}" in e.value.body["message"]
    an = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as a:
        an.messages.create(
            model="ds-reasoner", max_tokens=10, messages=[{"role": "user", "content": BIG}]
        )
    assert a.value.status_code == 402
    assert isinstance(a.value.body, dict) and a.value.body["type"] == "error"
    assert "Insufficient funds" in a.value.body["error"]["message"]


def lean_site(gateway: Gateway) -> LeanSite:
    runner = gateway.server._runner
    assert runner is not None
    return next(s for s in runner.sites if isinstance(s, LeanSite))


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_past_the_sites_bound_of_waiting_refusals_one_is_answered_at_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each waiting refusal holds a socket (and what the kernel buffered of its body)
    # whose close is seen only at its answer: however many orgs flood, the site holds at
    # most MAX_WAITING_REFUSALS of them; past that, a refusal is answered at once, and
    # books none of its org's turns.
    site = lean_site(gateway)
    monkeypatch.setattr(lean_server, "MAX_WAITING_REFUSALS", site.refusals_waiting + 2)
    org = gateway.new_org(0)
    key = gateway.new_key(org_id=org)
    assert ask(gateway, key, BIG).status_code == 402  # found broke
    answers: list[tuple[float, bytes]] = []
    t0 = time.monotonic()

    def one() -> None:
        got = _head_and_part(gateway, key)
        answers.append((time.monotonic() - t0, got))

    before = site.refusals_waiting
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: site.refusals_waiting == before + 2)  # both waiting their turns
    turns = dict(gateway.services.ledger_stage.broke._turn)
    t1 = time.monotonic()
    assert _head_and_part(gateway, key).startswith(b"HTTP/1.1 402 ")
    assert time.monotonic() - t1 < BROKE_DELAY_S / 2
    assert gateway.services.ledger_stage.broke._turn == turns  # no turn booked
    for t in threads:
        t.join()
    assert [a[:13] for _, a in answers] == [b"HTTP/1.1 402 "] * 2
    assert min(t for t, _ in answers) >= BROKE_DELAY_S
    wait_until(lambda: site.refusals_waiting == before)


def test_a_refusal_past_its_orgs_turns_is_answered_undrained(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past BROKE_MAX_WAIT_S of turns a request waits that long outside them and is then
    # answered without its body being read: no Drain for it, one for the one in turn.
    monkeypatch.setattr(broke_orgs, "REFUSALS_PER_S", 1)
    monkeypatch.setattr(broke_orgs, "BROKE_MAX_WAIT_S", 0.6)
    drains: list[int] = []

    class CountedDrain(Drain):
        def __init__(self, loop: Any, left: int, limit_s: float) -> None:
            drains.append(left)
            super().__init__(loop, left, limit_s)

    monkeypatch.setattr(lean_server, "Drain", CountedDrain)
    key = gateway.new_key(org_id=gateway.new_org(0))
    assert ask(gateway, key, BIG).status_code == 402  # found broke (read whole: no drain)
    drains.clear()
    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: answers.append(_head_and_part(gateway, key)))
        for _ in range(2)
    ]
    for t in threads:  # the first takes the turn 0.25 s away; the next would be 1.25 s
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert [a[:13] for a in answers] == [b"HTTP/1.1 402 "] * 2
    assert len(drains) == 1 and drains[0] > 0


def test_a_refused_request_that_came_pipelined_holds_no_bytes_while_it_waits(
    gateway: Gateway,
) -> None:
    # Bytes of a body that arrived behind another request are counted as held until the
    # request is refused; dropped, they must not count for the whole wait (the site
    # turns new heads away past its cap of such bytes).
    site = lean_site(gateway)
    key = gateway.new_key(org_id=gateway.new_org(0))
    assert ask(gateway, key, BIG).status_code == 402  # found broke
    host, port = gateway.url.removeprefix("http://").split(":")
    small = json.dumps({"model": "sim-small", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    big = json.dumps({"model": "ds-reasoner", "max_tokens": 10,
                      "messages": [{"role": "user", "content": BIG}]}).encode()  # fmt: skip

    def head(body: bytes) -> bytes:
        return (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()

    before = site.refusals_waiting
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head(small) + small + head(big) + big[: len(big) - 1000])
        wait_until(lambda: site.refusals_waiting == before + 1)
        assert site.unauthenticated == 0
        got = b""
        while got.count(b"HTTP/1.1 ") < 2 or not got.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            got += more
    assert b"HTTP/1.1 402 " in got
