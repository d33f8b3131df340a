"""CPU per request of model "auto"'s routing decision, and the loaded router's memory.

    python bench/router_bench.py [--n 5000]

Times ``AutoRouter.route`` (the prompt's end read from the request, features, every pool
model's predicted quality and cost, the pick, the route of the pick and its fallbacks)
for prompts of about 100 and 8,000 tokens, with the packaged router and the default
config's pool, on one thread. Prompts are English-like text from a fixed vocabulary
(about 1.3 tokens a word, counted with the gateway's own tokenizer), ending in a
multiple-choice question.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from tokenomy.config import load_config
from tokenomy.core.call import Call
from tokenomy.core.keys import ApiKey
from tokenomy.core.tokencount import TokenCounter
from tokenomy.gateway.registry import build_registry
from tokenomy.routing.auto import AutoRouter
from tokenomy.routing.learned import LearnedRouter

_PROSE = (
    "the of and a to in is you that it he was for on are as with his they at be this from "
    "have or by one had not but what all were when we there can an your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know photosynthesis equilibrium velocity function recursion"
)
WORDS = _PROSE.split()
QUESTION = "\n\nWhich of these is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"
KEY = ApiKey("key_bench", "tk-bench", "bench", None, None, None, 0, None)


def prompt(tokens: int, rng: random.Random, counter: TokenCounter, question: bool) -> str:
    """About ``tokens`` tokens; with ``question``, a question block ends it, else it is
    one block of words (the worst case: the router reads a whole tail's words)."""
    words = [rng.choice(WORDS) for _ in range(int(tokens / 1.3))]
    text = " ".join(words) + (QUESTION if question else "")
    while counter.count_text("gpt-4o", text) < tokens:
        text = " ".join(rng.choice(WORDS) for _ in range(20)) + " " + text
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000, help="timed requests per prompt size")
    args = ap.parse_args()
    cfg = load_config()
    gc.collect()
    tracemalloc.start()
    learned = LearnedRouter.load()
    gc.collect()
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    auto = AutoRouter(learned, cfg.router.pool, build_registry(cfg), fallbacks=cfg.router.fallbacks)
    rng = random.Random(20)
    counter = TokenCounter()
    print(f"loaded router: {mem / 1e6:.1f} MB (tracemalloc), {len(learned.models)} models")
    print("| prompt | ends in | chars | p50 µs | p99 µs | max µs |")
    print("|---|---|---:|---:|---:|---:|")
    for tokens, question in ((100, True), (100, False), (8000, True), (8000, False)):
        bodies = [
            {
                "model": "auto",
                "messages": [{"role": "user", "content": prompt(tokens, rng, counter, question)}],
            }
            for _ in range(20)
        ]
        chars = sum(len(b["messages"][0]["content"]) for b in bodies) // len(bodies)
        for b in bodies[:5]:  # warm up
            auto.route(Call("chat", "openai", b, "auto", False, KEY))
        times = []
        for i in range(args.n):
            call = Call("chat", "openai", bodies[i % len(bodies)], "auto", False, KEY)
            t = time.thread_time_ns()
            auto.route(call)
            times.append(time.thread_time_ns() - t)
        times.sort()
        p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
        end = "a question block" if question else "one block of words"
        print(
            f"| ~{tokens} tokens | {end} | {chars} | {p50 / 1e3:.0f} | {p99 / 1e3:.0f} "
            f"| {times[-1] / 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
