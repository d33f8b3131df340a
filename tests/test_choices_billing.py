"""``n`` > 1 (and ``best_of``) through the running gateway: the hold covers every choice,
the charge is the vendor's usage for every choice, and a charge above its hold is posted
in full and counted, never written off (official SDK, simulator; SQLite, then PostgreSQL
+ Redis)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, running_gateway
from tests.servers import ThreadServer
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.pricing import price_request
from tokenomy.config import parse_config
from tokenomy.core.usage import Usage
from tokenomy.ledger.accounts import OrgMeter

BOOK = PriceBook.load()
#: ``overrun`` states an output cap its vendor does not keep to (the client sends none).
EXTRA = """
  - name: overrun
    deployments: [{vendor: sim, model: overrun-a, price: sim/sim-small, max_output: 3}]
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def gw(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("choices")
    with running_gateway(sim.url, tmp, request.param, EXTRA, patient=True) as gw:
        yield gw


def price(row: dict[str, Any], usage: Usage) -> int:
    version = BOOK.version(row["price_version"])
    at = datetime.fromtimestamp(row["ts_ms"] / 1000, UTC)
    return price_request(version, usage, at=at).total.nanos


def test_n_choices_are_held_and_charged_for_every_choice(gw: Gateway) -> None:
    org = gw.new_org(10**10)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.new_key(org_id=org), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="sim-small",
        messages=HI,  # type: ignore[arg-type]
        n=8,
        max_tokens=10,
    )
    r = raw.parse()
    assert len(r.choices) == 8 and r.usage is not None
    assert r.usage.completion_tokens == 80  # ten tokens for each of the eight choices
    (row,) = gw.wait_events(1, request_id=raw.headers["x-request-id"])
    vendor = Usage.from_openai(r.usage.model_dump())
    assert row["output_tokens"] == 80
    # Charged the vendor's usage for all eight choices...
    assert (
        row["cost_nanos"] == price(row, vendor) > price(row, Usage(vendor.input_tokens, 0, 0, 10))
    )
    # ...which the hold covered: eighty output tokens' worth, besides the prompt's bound.
    assert row["held_nanos"] >= price(
        row, Usage(input_tokens=row["input_tokens"], output_tokens=80)
    )
    assert gw.services.ledger.balance(org) == 10**10 - row["cost_nanos"]
    assert gw.services.ledger.trial_balance() == {"USD": 0}


def test_best_of_on_legacy_completions_is_held_for_every_candidate(gw: Gateway) -> None:
    org = gw.new_org(10**10)
    key = gw.new_key(org_id=org)
    r = httpx.post(
        gw.base_url + "/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "sim-small", "prompt": "Once upon", "max_tokens": 10, "best_of": 5},
    )
    assert r.status_code == 200, r.text
    (row,) = gw.wait_events(1, request_id=r.headers["x-request-id"])
    # The vendor may generate (and bill) all five candidates: the hold covers them.
    assert row["held_nanos"] >= price(
        row, Usage(input_tokens=row["input_tokens"], output_tokens=50)
    )


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"model": "sim-small", "messages": HI, "n": 17}, "n"),
        ("/completions", {"model": "sim-small", "prompt": "x", "n": 17}, "n"),
        ("/completions", {"model": "sim-small", "prompt": "x", "best_of": 17}, "best_of"),
    ],
)
def test_n_over_the_maximum_is_refused_naming_it(
    gw: Gateway, path: str, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(gw.base_url + path, headers={"Authorization": f"Bearer {gw.key}"}, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert "16" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0).chat.completions.create(
            model="sim-small",
            messages=HI,  # type: ignore[arg-type]
            n=17,
        )
    assert e.value.param == "n"


def overrun_metrics(gw: Gateway) -> tuple[int, int]:
    text = gw.services.metrics.render()
    count = re.search(
        r'^tokenomy_ledger_overruns_total\{model="overrun",vendor="sim"\} (\d+)$', text, re.M
    )
    nanos = re.search(
        r'^tokenomy_ledger_overrun_nanos_total\{model="overrun",vendor="sim",currency="USD"\} (\d+)$',
        text,
        re.M,
    )
    return (int(count.group(1)) if count else 0, int(nanos.group(1)) if nanos else 0)


def test_usage_above_the_hold_is_posted_in_full_and_counted(gw: Gateway) -> None:
    org = gw.new_org(10**10)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gw.new_key(org_id=org), max_retries=0)
    before = overrun_metrics(gw)
    raw = c.chat.completions.with_raw_response.create(model="overrun", messages=HI)  # type: ignore[arg-type]
    r = raw.parse()
    assert r.usage is not None and r.usage.completion_tokens > 3  # more than the stated cap
    (row,) = gw.wait_events(1, request_id=raw.headers["x-request-id"])
    vendor = Usage.from_openai(r.usage.model_dump())
    assert row["cost_nanos"] == price(row, vendor) > row["held_nanos"] > 0
    # The client is told what it was charged; the balance pays all of it, durably and live.
    assert int(Decimal(raw.headers["x-tokenomy-cost"]) * 10**9) == row["cost_nanos"]
    assert gw.services.ledger.balance(org) == 10**10 - row["cost_nanos"]
    assert gw.services.ledger.trial_balance() == {"USD": 0}
    meter = OrgMeter(gw.services.ledger_stage.accounts.orgs[org])
    live = gw.server.call(gw.services.live.org_state(meter))
    assert (live.used, live.held) == (row["cost_nanos"], 0)
    count, nanos = overrun_metrics(gw)
    assert count == before[0] + 1
    assert nanos == before[1] + row["cost_nanos"] - row["held_nanos"]


@pytest.mark.parametrize(
    ("endpoint", "body", "choices"),
    [
        ("chat", {"n": 8}, 8),
        ("chat", {}, 1),
        ("messages", {"n": 8}, 1),  # Anthropic has no n, and none is sent on
        ("completions", {"prompt": "x", "n": 2, "best_of": 5}, 5),
        ("completions", {"prompt": ["a", "b", "c"], "n": 2}, 6),
        ("completions", {"prompt": [[1, 2], [3]], "best_of": 3}, 6),
        ("completions", {"prompt": [1, 2, 3], "n": 4}, 4),  # one tokenised prompt
    ],
)
def test_the_worst_case_counts_every_choice_of_every_prompt(
    endpoint: str, body: dict[str, Any], choices: int
) -> None:
    from tests.test_relay import KEY
    from tokenomy.core.call import Call

    assert Call(endpoint, "openai", body, "m", False, KEY).choices() == choices


def test_the_choice_cap_comes_from_the_config() -> None:
    from tokenomy.core.errors import InvalidRequest
    from tokenomy.gateway import validation

    body: dict[str, Any] = {"model": "m", "messages": HI, "n": 5}
    assert parse_config("server: {max_choices: 5}", "f.yaml").server.max_choices == 5
    assert validation.check_chat(body, 50, 5) is False
    with pytest.raises(InvalidRequest) as e:
        validation.check_chat(body, 50, 4)
    assert e.value.param == "n" and "between 1 and 4" in str(e.value)
