"""The agent cache bench, short: an 8-turn coding agent through the running gateway with
the openai SDK, on three equally priced deployments that the router spreads calls over.

With affinity the agent's task stays where its prompt cache is warm, so nearly all the
context it re-reads is billed as cache reads; without it the calls scatter and re-pay
much of it at the full input price.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bench.agent_cache_bench import Summary, config_yaml, run_agents, summarize

from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.billing.money import Currency
from tokenomy.config import parse_config
from tokenomy.ledger.store import Kind
from tokenomy.services import build_services

TURNS = 8
#: Enough agents that calls scattered at random re-read under 80% from cache (p < 1e-4).
AGENTS = 6


@contextmanager
def gateway(sim_url: str, tmp: Path, *, affinity: bool) -> Iterator[tuple[str, str]]:
    db = f"sqlite:///{tmp / f'agent-{affinity}-{secrets.token_hex(3)}.db'}"
    svc = build_services(
        parse_config(config_yaml(db, sim_url, affinity=affinity), "t"), dict(os.environ)
    )
    srv = ThreadServer(lambda: app_for(svc)).start()
    try:
        org = svc.ledger.create_org("agents", Currency.USD)
        svc.ledger.post(Kind.TOPUP, org.id, 10**13)
        srv.call(svc.refresh_accounts())  # the gateway knows the org at once
        secret, rec = svc.keys.create("agents", org_id=org.id)
        svc.key_cache.put(secret, rec)
        yield srv.url + "/v1", secret
    finally:
        srv.stop()


def run(sim_url: str, tmp: Path, *, affinity: bool, seed: int) -> Summary:
    with gateway(sim_url, tmp, affinity=affinity) as (base, key):
        runs = run_agents(
            base,
            key,
            agents=AGENTS,
            turns=TURNS,
            context_tokens=16_000,
            seed=seed,
            system_tokens=2_000,
        )
    return summarize(runs)


@pytest.fixture(scope="module")
def results(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Summary]:
    tmp = tmp_path_factory.mktemp("agent-bench")
    seed = secrets.randbits(20)  # prompts the shared simulator has not seen
    return {
        True: run(sim.url, tmp, affinity=True, seed=seed),
        False: run(sim.url, tmp, affinity=False, seed=seed + 1),
    }


def test_with_affinity_the_reread_context_is_billed_as_cache_reads(
    results: dict[bool, Summary],
) -> None:
    on = results[True]
    assert on.calls == AGENTS * TURNS
    assert on.cached_share >= 0.9, on
    # Each agent's first call finds no key; every later one is a hit on its deployment.
    assert on.affinity == {"miss": AGENTS, "hit": AGENTS * (TURNS - 1)}, on.affinity


def test_without_affinity_the_calls_scatter_and_pay_more(results: dict[bool, Summary]) -> None:
    on, off = results[True], results[False]
    assert len(off.deployments) == 3, off.deployments  # the router spreads equal prices
    assert off.affinity == {"-": AGENTS * TURNS}  # no decision is made, none is reported
    assert off.cached_share < 0.8, off
    assert off.cached_share < on.cached_share - 0.15, (on, off)
    # The same work (within the sim's token counts) costs more without the cache.
    assert abs(off.prompt_tokens - on.prompt_tokens) < on.prompt_tokens * 0.02
    assert off.cost_nanos > on.cost_nanos
