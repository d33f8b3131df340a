"""CPU per request of tokenomy's own request path, in-process: no HTTP, no network.

    PYTHONPATH=src python bench/pipeline_bench.py [--requests N] [--rounds R] [--profile FILE]
        [--prompt-bytes N]

Builds the real services from ``bench/tokenomy-bench.yaml`` on a temporary SQLite file,
with an org topped up, a daily key budget and a key bound to the org (as ``make bench``
sets up through the CLI), and rate limits on for key and org. The vendor is replaced by
an in-memory provider that answers at once with the fixed JSON body, or SSE stream, of
the bench upstream (``bench/upstream.py``). Each request then runs as
the chat route runs it (``api/edge.py run_inference``): authenticate, read and validate
the body, route, open (stages, provider), relay the stream, finish (settle, record),
with an exchange that keeps the answer in memory instead of an HTTP response (nor the
provider's own work: serialising the request, HTTP). Requests run one
after another on a uvloop loop; the durable writer is flushed every ``--flush-every``
requests and its cost (including its worker thread) is reported apart. Figures are
process CPU time (``time.process_time``) per request; each round is reported so the
noise shows, and the summary gives the median and best rounds.

``--prompt-bytes N`` sends a user message of N bytes (the ``prompt400k`` workload of
``make bench`` is 400,000) instead of the short one.

``--long-stream`` answers streams with the ``stream2k`` workload's 2,000 events.

``--tenants N`` makes N orgs, each with its key and key budget, and sends the requests
from their keys in turn (the ``orgs1k`` workload is 1,000): what many tenants cost
against one.

``--profile FILE`` writes a profile (pstats format) of one extra json and sse round, the
writer excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from systems import request_body  # noqa: E402  (the request make bench sends)
from upstream import json_body, long_sse_body, sse_body  # noqa: E402
from workloads import prompt  # noqa: E402

from tokenomy.api import edge, openai_routes  # noqa: E402
from tokenomy.config import load_config  # noqa: E402
from tokenomy.core.registry import Deployment  # noqa: E402
from tokenomy.providers.sse import SSEEvent, iter_event_batches, iter_event_bytes  # noqa: E402
from tokenomy.services import Services, build_services  # noqa: E402
from tokenomy.store.db import migrate  # noqa: E402

MODES = ("json", "sse")
JSON_ANSWER = json_body()
#: The stream the vendor answers (--long-stream: the stream2k workload's 2,000 events).
ANSWERS = {"sse": sse_body()}


# ---- the in-memory vendor ----------------------------------------------------------------


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data  # the fixed answer fits one network read


class FixedResponse:
    """An upstream 200 whose body is already here, framed by the real SSE parser."""

    status = 200

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def event_batches(self) -> AsyncIterator[list[SSEEvent]]:
        return iter_event_batches(_one_chunk(self._body))

    def event_bytes(self) -> AsyncIterator[bytes]:
        return iter_event_bytes(_one_chunk(self._body))

    def release(self) -> None:
        return None


class FixedProvider:
    """An OpenAI-dialect vendor that answers at once with the bench upstream's bodies."""

    dialect = "openai"

    async def send(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any], *, stream: bool
    ) -> FixedResponse:
        return FixedResponse(ANSWERS["sse"] if stream else JSON_ANSWER)

    async def close(self) -> None:
        return None


class BenchExchange:
    """An ``edge.Exchange`` that keeps the answer in memory: no HTTP."""

    def __init__(self, secret: str, body: bytes) -> None:
        self.headers = {"authorization": "Bearer " + secret, "content-type": "application/json"}
        self._body = body
        self.out: list[bytes] = []

    async def body(self, limit: int) -> bytes:
        return self._body

    async def reply(self, body: bytes, headers: Any) -> None:
        self.out.append(body)

    async def start_stream(self, headers: Any) -> None:
        return None

    async def send(self, chunk: bytes) -> None:
        self.out.append(chunk)

    async def end(self, chunk: bytes) -> None:
        self.out.append(chunk)


# ---- set-up ------------------------------------------------------------------------------


def build(workdir: Path, tenants: int = 1) -> tuple[Services, Iterator[str]]:
    """The services of ``tokenomy serve`` on a fresh database, and the funded keys'
    secrets (one per tenant: its own org and key budget), in turn for ever."""
    os.environ.update(
        TOKENOMY_DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        TOKENOMY_BENCH_UPSTREAM_KEY="sk-bench-upstream",
    )
    os.environ.pop("TOKENOMY_REDIS_URL", None)
    cfg = load_config(BENCH / "tokenomy-bench.yaml")
    svc = build_services(cfg)
    migrate(svc.engine)
    secrets = []
    for i in range(tenants):
        org = svc.ledger.create_org(f"bench-org-{i}", "USD")
        svc.ledger.post("topup", org.id, 1_000_000 * 10**9)
        secret, key = svc.keys.create(f"bench-{i}", org_id=org.id)
        svc.ledger.set_budget("key", key.id, "day", amount_nanos=1_000_000 * 10**9)
        secrets.append(secret)
    fixed = FixedProvider()
    providers = {k: fixed for k in svc.providers}
    svc.providers = providers
    svc.pipeline.providers = providers
    return svc, itertools.cycle(secrets)


async def start(svc: Services) -> None:
    """What Services.start does, minus the background tasks (they would add noise)."""
    svc.key_cache.refresh()
    await svc.refresh_accounts()


# ---- one request, as the chat route runs it -------------------------------------------

CHAT = next(r for r in openai_routes.INFERENCE if r.path == "/v1/chat/completions")


async def serve(svc: Services, ex: BenchExchange) -> bytes:
    await edge.run_inference(ex, svc, CHAT.build)
    return b"".join(ex.out)


# ---- measuring ---------------------------------------------------------------------------


#: The user message, when --prompt-bytes asks for a long one.
USER: list[str] = []
#: The request mode streams are asked as ("long" with --long-stream: the model named as
#: its vendor names it, so its events pass without a rename, as in ``make bench``).
STREAM_MODE = ["sse"]


def body_for(mode: str) -> bytes:
    return request_body(STREAM_MODE[0] if mode == "sse" else mode, *USER)


async def run_round(
    svc: Services, secrets: Iterator[str], mode: str, n: int, flush_every: int
) -> tuple[float, float, bytes]:
    """(request CPU s, writer CPU s, last answer) for ``n`` requests of ``mode``."""
    raw = body_for(mode)
    req_cpu = flush_cpu = 0.0
    answer = b""
    done = 0
    while done < n:
        batch = min(flush_every, n - done)
        t0 = time.process_time()
        for _ in range(batch):
            answer = await serve(svc, BenchExchange(next(secrets), raw))
        t1 = time.process_time()
        await svc.usage_writer.flush()
        t2 = time.process_time()
        req_cpu += t1 - t0
        flush_cpu += t2 - t1
        done += batch
    return req_cpu, flush_cpu, answer


def _fingerprint(answer: bytes) -> str:
    return hashlib.sha256(answer).hexdigest()[:12]


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    svc, secrets = build(workdir, args.tenants)
    await start(svc)
    for mode in MODES:  # warm-up: caches, first loads of org and budget state
        await run_round(svc, secrets, mode, max(args.warmup, args.tenants), args.flush_every)
    # As tokenomy serve does once started: keep the collector off long-lived objects.
    gc.collect()
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(5000, mid, old)

    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    answers: dict[str, bytes] = {}
    for r in range(args.rounds):
        line = [f"round {r + 1}:"]
        for mode in MODES:
            req, flush, answer = await run_round(
                svc, secrets, mode, args.requests, args.flush_every
            )
            per, fl = req / args.requests * 1e6, flush / args.requests * 1e6
            results[mode].append((per, fl))
            answers[mode] = answer
            line.append(f"{mode} {per:6.1f} µs (+ writer {fl:5.1f} µs)")
        print("  ".join(line), flush=True)

    print()
    print(f"µs CPU per request, {args.rounds} rounds of {args.requests} (median / best):")
    for mode in MODES:
        reqs = [p for p, _ in results[mode]]
        fls = [f for _, f in results[mode]]
        print(
            f"  {mode:4}  request path {statistics.median(reqs):6.1f} / {min(reqs):6.1f}"
            f"   writer flush {statistics.median(fls):5.1f} / {min(fls):5.1f}"
            f"   answer {_fingerprint(answers[mode])} ({len(answers[mode])} bytes)"
        )

    if args.profile:
        prof = cProfile.Profile()
        for mode in MODES:
            raw = body_for(mode)
            prof.enable()
            for _ in range(args.requests):
                await serve(svc, BenchExchange(next(secrets), raw))
            prof.disable()
            await svc.usage_writer.flush()
        prof.dump_stats(args.profile)
        print(f"profile of {args.requests} json + {args.requests} sse requests: {args.profile}")

    total = args.rounds * args.requests * len(MODES) + max(args.warmup, args.tenants) * len(MODES)
    total += args.requests * len(MODES) if args.profile else 0
    rc = check(svc, total)
    await svc.stop()
    return rc


def check(svc: Services, expected: int) -> int:
    """Every request recorded exactly once, and the ledger balanced."""
    with svc.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_events")
        n, distinct = rows.one()
        bad = conn.exec_driver_sql("SELECT COUNT(*) FROM usage_events WHERE status != 'ok'")
        errors = bad.scalar_one()
    trial = svc.ledger.trial_balance()
    balanced = all(v == 0 for v in trial.values())
    print(
        f"recorded {n} usage events ({distinct} distinct, {errors} not ok) for {expected} "
        f"requests; ledger {'balanced' if balanced else f'NOT balanced: {trial}'}"
    )
    return 0 if n == distinct == expected and not errors and balanced else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per mode and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--flush-every", type=int, default=250, help="requests per writer flush")
    p.add_argument("--profile", metavar="FILE", help="write a profile (pstats) of one more round")
    p.add_argument("--prompt-bytes", type=int, help="a user message of this many bytes")
    p.add_argument("--long-stream", action="store_true", help="a 2,000-event stream")
    p.add_argument("--tenants", type=int, default=1, help="orgs and keys, sending in turn")
    args = p.parse_args()
    if args.prompt_bytes:
        USER.append(prompt(args.prompt_bytes))
    if args.long_stream:
        ANSWERS["sse"] = long_sse_body()
        STREAM_MODE[0] = "long"
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="tokenomy-pipeline-bench-") as tmp:
        return asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
