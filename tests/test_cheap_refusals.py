"""A refused request costs less than an admitted one: no refusal tokenizes a large body,
and the exact count a near-miss needs runs off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway
from tokenomy.core.call import Call
from tokenomy.core.tokencount import TokenCounter

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
