"""Cache affinity on a coding agent: a simulated agent's turns through the gateway, on a
model with three equally priced deployments, with and without affinity.

    python bench/agent_cache_bench.py [--turns 50] [--context 200000] [--agents 1]
                                      [--deployments 3] [--pause-s 0] [--cache-ttl-s 300]

Each turn re-sends the whole conversation (the system prompt, every earlier answer and
tool output) plus a new tool output, so the context grows to ``--context`` tokens. The
simulator keeps a prompt cache per deployment with a 5-minute TTL; the gateway shares
equal prices at random (``routing.spread_equal``), as load balancing does. Reported:
the share of re-read context (the previous turn's prompt) billed as cache reads, and
the total cost, at GPT-5.4's prices ($2.50 input, $0.25 cached input, $15 output).

Starts ``tokenomy sim`` and one ``tokenomy serve`` per run (SQLite in a temporary
directory) and drives them with the openai SDK.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

try:  # run as a script, beside its neighbours
    from tokenomy_procs import free_port, seed_key, start
except ModuleNotFoundError:  # imported as bench.agent_cache_bench (its test)
    from bench.tokenomy_procs import free_port, seed_key, start

MODEL = "agent"
PRICE = "openai/gpt-5.4"
DEPLOYMENTS = 3
#: The system prompt's size, in tokens (about four characters each).
SYSTEM_TOKENS = 4000
#: Words of code-like filler text.
_WORDS: tuple[str, ...] = tuple(
    " ".join(
        (
            "def return self import from class if else for while try except",
            "with as yield async await lambda None True False value result index",
            "count buffer parser token request response config route deploy cache ledger price",
            "usage stream chunk error assert test fixture module package path file line",
            "column width height offset",
        )
    ).split(" ")
)


def config_yaml(
    db_url: str,
    sim_url: str,
    *,
    affinity: bool,
    deployments: int = DEPLOYMENTS,
    ttl_s: float = 300.0,
) -> str:
    """A gateway with one model on ``deployments`` equally priced deployments of the
    simulator (upstream models agent-a, agent-b, ...: each its own prompt cache)."""
    deps = "\n".join(
        f"      - {{vendor: sim, model: agent-{chr(97 + i)}, price: {PRICE}}}"
        for i in range(deployments)
    )
    return f"""
database: {{url: "{db_url}"}}
writer: {{flush_interval_ms: 50}}
routing: {{affinity: {str(affinity).lower()}, affinity_ttl_s: {ttl_s}, spread_equal: true}}
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none, name: Sim}}
models:
  - name: {MODEL}
    deployments:
{deps}
"""


def filler(rng: random.Random, tokens: int) -> str:
    """Code-like text of about ``tokens`` tokens (four characters a token)."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


@dataclass
class Turn:
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_nanos: int
    deployment: str
    affinity: str


@dataclass
class Run:
    """One agent's turns, and what its cache did."""

    turns: list[Turn] = field(default_factory=list)

    @property
    def reread(self) -> int:
        """Tokens each turn re-sends from the turn before (its whole previous prompt)."""
        t = self.turns
        return sum(min(t[i - 1].prompt_tokens, t[i].prompt_tokens) for i in range(1, len(t)))

    @property
    def cached(self) -> int:
        return sum(t.cached_tokens for t in self.turns[1:])

    @property
    def cost_nanos(self) -> int:
        return sum(t.cost_nanos for t in self.turns)


def nanos(units: str) -> int:
    return int(Decimal(units) * 10**9)


def run_agent(
    client: openai.OpenAI,
    *,
    turns: int,
    context_tokens: int,
    seed: int,
    task: str | None = None,
    system_tokens: int = SYSTEM_TOKENS,
    pause_s: float = 0.0,
) -> Run:
    """One coding agent: ``turns`` calls, each re-sending the conversation so far plus a
    new tool output, growing to about ``context_tokens``."""
    rng = random.Random(seed)
    salt = f"session {seed:x}: "  # a prompt no deployment has seen
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": salt + filler(rng, system_tokens)},
        {"role": "user", "content": "Fix the failing test in the parser module."},
    ]
    per_turn = max(1, (context_tokens - system_tokens) // max(turns, 1))
    headers = {"X-Tokenomy-Task": task} if task else None
    run = Run()
    for i in range(turns):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=48,
            extra_headers=headers,
        )
        r = raw.parse()
        u = r.usage
        assert u is not None
        details = u.prompt_tokens_details
        run.turns.append(
            Turn(
                prompt_tokens=u.prompt_tokens,
                cached_tokens=(details.cached_tokens or 0) if details else 0,
                output_tokens=u.completion_tokens,
                cost_nanos=nanos(raw.headers["x-tokenomy-cost"]),
                deployment=raw.headers["x-tokenomy-deployment"],
                affinity=raw.headers.get("x-tokenomy-affinity", "-"),
            )
        )
        if pause_s:
            time.sleep(pause_s)  # the agent runs its tools, the user reads
        messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
        messages.append({"role": "user", "content": f"Tool output {i}:\n" + filler(rng, per_turn)})
    return run


def run_agents(
    base_url: str,
    key: str,
    *,
    agents: int,
    turns: int,
    context_tokens: int,
    seed: int,
    system_tokens: int = SYSTEM_TOKENS,
    pause_s: float = 0.0,
) -> list[Run]:
    """``agents`` agents at once, each its own task."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)

    def one(i: int) -> Run:
        return run_agent(
            client,
            turns=turns,
            context_tokens=context_tokens,
            seed=seed * 1000 + i,
            task=f"agent-{seed}-{i}",
            system_tokens=system_tokens,
            pause_s=pause_s,
        )

    with ThreadPoolExecutor(agents) as pool:
        return list(pool.map(one, range(agents)))


@dataclass(frozen=True)
class Summary:
    calls: int
    prompt_tokens: int
    reread_tokens: int
    cached_tokens: int
    cost_nanos: int
    deployments: dict[str, int]
    affinity: dict[str, int]

    @property
    def cached_share(self) -> float:
        """Cache reads over re-read context (display only: never money)."""
        return self.cached_tokens / self.reread_tokens if self.reread_tokens else 0.0


def summarize(runs: list[Run]) -> Summary:
    turns = [t for r in runs for t in r.turns]
    return Summary(
        calls=len(turns),
        prompt_tokens=sum(t.prompt_tokens for t in turns),
        reread_tokens=sum(r.reread for r in runs),
        cached_tokens=sum(r.cached for r in runs),
        cost_nanos=sum(r.cost_nanos for r in runs),
        deployments=dict(Counter(t.deployment for t in turns)),
        affinity=dict(Counter(t.affinity.split(":")[0] for t in turns)),
    )


# ---- processes ------------------------------------------------------------------------


def bench(a: argparse.Namespace, tmp: Path, sim_url: str, affinity: bool, seed: int) -> Summary:
    db = f"sqlite:///{tmp / f'gw-{int(affinity)}.db'}"
    key = seed_key(db)
    config = tmp / f"gw-{int(affinity)}.yaml"
    config.write_text(
        config_yaml(db, sim_url, affinity=affinity, deployments=a.deployments, ttl_s=a.cache_ttl_s)
    )
    port = free_port()
    gw = start(["serve", "--config", str(config)], port, "/healthz", tmp / f"gw-{affinity}.log")
    try:
        runs = run_agents(
            f"http://127.0.0.1:{port}/v1",
            key,
            agents=a.agents,
            turns=a.turns,
            context_tokens=a.context,
            seed=seed,
            pause_s=a.pause_s,
        )
    finally:
        gw.terminate()
        gw.wait(30)
    return summarize(runs)


def usd(n: int) -> str:
    return f"${Decimal(n) / 10**9:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--context", type=int, default=200_000, help="tokens at the last turn")
    ap.add_argument("--agents", type=int, default=1, help="agents (tasks) at once")
    ap.add_argument("--deployments", type=int, default=DEPLOYMENTS, help="at most 26")
    ap.add_argument("--pause-s", type=float, default=0.0, help="between an agent's turns")
    ap.add_argument(
        "--cache-ttl-s", type=float, default=300.0, help="the simulator's prompt-cache TTL"
    )
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="agent-cache-bench-"))
    sim_port = free_port()
    args = ["sim", "--output-tokens", "48", "--cache-ttl-s", str(a.cache_ttl_s)]
    sim = start(args, sim_port, "/v1/models", tmp / "sim.log")
    try:
        rows = []
        for seed, affinity in enumerate((True, False), start=1):
            t0 = time.perf_counter()
            s = bench(a, tmp, f"http://127.0.0.1:{sim_port}", affinity, seed)
            rows.append((affinity, s, time.perf_counter() - t0))
    finally:
        sim.terminate()
        sim.wait(30)
    print(
        f"{a.agents} agent(s) x {a.turns} turns, context to ~{a.context:,} tokens, "
        f"{a.deployments} deployments at {PRICE}'s price"
    )
    cols = [
        "affinity",
        "calls",
        "prompt",
        "re-read",
        "cached",
        "share",
        "cost",
        "spread",
        "decisions",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for affinity, s, secs in rows:
        spread = ", ".join(f"{d.split('/')[-1]} {n}" for d, n in sorted(s.deployments.items()))
        decisions = ", ".join(f"{k} {n}" for k, n in sorted(s.affinity.items()))
        print(
            f"| {'on' if affinity else 'off'} | {s.calls} | {s.prompt_tokens:,} | "
            f"{s.reread_tokens:,} | {s.cached_tokens:,} | {s.cached_share:.2%} | "
            f"{usd(s.cost_nanos)} | {spread} | {decisions} |  ({secs:.0f} s)"
        )


if __name__ == "__main__":
    main()
