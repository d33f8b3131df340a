"""A seeded usage history for the demo, made by running simulated traffic through the real
pipeline (routing, holds, metering, pricing, settling, the batched writer), with each call
dated into the past. Nothing is written to the usage tables directly.

Calls carry their own ``ts_ms``, which the ledger stage prices and meters at, so a call
dated 40 days ago is billed at the prices of that day. A call served by a simulated
standby is recorded under the vendor it stands in for (the one whose price it bills at),
so vendor and country shares look like real traffic; its deployment id still names the
simulator. Latencies are the simulator's real
ones: seed against a simulator without pacing (``ttft_ms=0``, ``tokens_per_second=0``) to
keep a 90-day history to a few seconds a day's worth.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from tokenomy.analytics.rollup import DAY
from tokenomy.catalog.vendors import load_presets
from tokenomy.core.call import Call
from tokenomy.core.errors import GatewayError
from tokenomy.core.keys import ApiKey
from tokenomy.core.registry import Deployment
from tokenomy.ledger.store import Kind, NotFoundError
from tokenomy.services import Services

#: (id, name, currency, share of traffic, keys)
ORGS: Final = (
    ("org_hist_acme", "Acme Robotics", "USD", 0.40, ("prod", "staging", "batch")),
    ("org_hist_globex", "Globex Analytics", "USD", 0.27, ("api", "notebooks")),
    ("org_hist_lotus", "Lotus Cloud (Shanghai)", "CNY", 0.21, ("agents", "search")),
    ("org_hist_initech", "Initech", "USD", 0.12, ("support-bot",)),
)
TOPUP_UNITS: Final = 1_000_000
#: Traffic by hour of day (UTC): busiest in the middle of the day.
_HOUR_WEIGHTS: Final = [1 + 3 * math.sin(math.pi * h / 24) ** 4 for h in range(24)]
_WORDS: Final = [
    "token",
    "price",
    "vendor",
    "model",
    "route",
    "cache",
    "stream",
    "budget",
    "latency",
    "invoice",
    "agent",
    "search",
    "summary",
    "table",
    "report",
    "customer",
    "order",
    "review",
    "draft",
    "translate",
    "explain",
    "compare",
    "plan",
]


@dataclass
class HistoryReport:
    calls: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    first_ms: int = 0
    last_ms: int = 0
    seconds: float = 0.0


def _chat_models(svc: Services, at: datetime) -> list[str]:
    """Served chat models with a price (the simulator's or a vendor's)."""
    out = []
    for route in svc.registry.routes:
        dep = route.deployments[0]
        if "embeddings" in dep.capabilities:
            continue
        if svc.pricer.version(dep, at) is not None:
            out.append(route.name)
    return sorted(out)


async def _accounts(svc: Services) -> list[tuple[ApiKey, float]]:
    """The demo orgs, funded, with their keys (created once, reused on later runs)."""

    def setup() -> list[tuple[ApiKey, float]]:
        existing = {(k.org_id, k.name): k for k in svc.keys.all()}
        out = []
        for org_id, name, currency, share, key_names in ORGS:
            try:
                svc.ledger.org(org_id)
            except NotFoundError:
                svc.ledger.create_org(name, currency, org_id=org_id)
            svc.ledger.post(
                Kind.TOPUP,
                org_id,
                TOPUP_UNITS * 10**9,
                memo="demo history",
                txn_id=f"hist-{org_id}",
            )
            for kn in key_names:
                key = existing.get((org_id, kn))
                if key is None:
                    _, key = svc.keys.create(kn, org_id=org_id)
                out.append((key, share / len(key_names)))
        return out

    keys = await asyncio.to_thread(setup)
    await svc.refresh_accounts()
    return keys


def _model_weights(models: Sequence[str], day: int, days: int, rng: random.Random) -> list[float]:
    """Popularity shifts over time: each model rises or fades along its own curve."""
    out = []
    for i, _ in enumerate(models):
        phase = (i * 0.37) % 1.0
        launch = phase * days * 0.6
        ramp = 1 / (1 + math.exp(-(day - launch) / 4)) if i % 3 == 0 else 1.0
        fade = 1.0 - 0.6 * (day / max(days, 1)) if i % 4 == 1 else 1.0
        out.append(max(0.02, (1.0 + 3 * phase) * ramp * fade))
    return out


def _prompt(rng: random.Random, org: str) -> str:
    n = int(min(4000, rng.lognormvariate(4.6, 1.0)))
    system = f"You are the assistant of {org}. " * 20  # a shared prefix: prompt-cache hits
    return system + " ".join(rng.choice(_WORDS) for _ in range(n))


def _stand_ins(svc: Services) -> dict[str, Deployment]:
    """Each simulated standby deployment, as the vendor it stands in for (same id, prices
    and simulator behind it; the vendor's key, name and home country)."""
    presets = load_presets()
    out: dict[str, Deployment] = {}
    for route in svc.registry.routes:
        for dep in route.deployments:
            real = presets.get(dep.price_ref[0])
            if not dep.standby or real is None or real.key == dep.vendor.key:
                continue
            vendor = replace(
                dep.vendor, key=real.key, name=f"{real.name} (simulated)", country=real.country
            )
            out[dep.id] = replace(dep, vendor=vendor)
    return out


async def _one(
    svc: Services, call: Call, cancel_after: int | None, stand_ins: Mapping[str, Deployment]
) -> str:
    pipeline = svc.pipeline
    relay = None
    try:
        pipeline.route(call)
        outcome = await pipeline.open(call)
        relay = outcome.relay
        if relay is not None:
            chunks = relay.chunks()
            try:
                n = 0
                async for _ in chunks:
                    n += 1
                    if cancel_after is not None and n >= cancel_after:
                        call.status, call.http_status = "cancelled", 499
                        break
            finally:
                await chunks.aclose()
    except GatewayError as e:
        pipeline.fail(call, e)
    finally:
        # Served: now record (and settle the vendor's revenue) under the stood-in vendor.
        # Prices follow the deployment's price reference, which the stand-in keeps.
        if call.deployment is not None:
            call.deployment = stand_ins.get(call.deployment.id, call.deployment)
        await pipeline.finish(call, relay)
    return call.status


def _calls_on(day: int, days: int, per_day: int, rng: random.Random, day_ms: int) -> int:
    growth = math.exp(math.log(8) * (day - days + 1) / max(days, 1))  # 8x over the period
    weekday = datetime.fromtimestamp(day_ms / 1000, UTC).weekday()
    season = 0.55 if weekday >= 5 else 1.0
    return max(1, int(per_day * growth * season * rng.uniform(0.85, 1.15)))


async def seed_history(
    days: int,
    svc: Services,
    *,
    calls_per_day: int = 120,
    seed: int = 0,
    now_ms: int | None = None,
    concurrency: int = 24,
    models: Sequence[str] | None = None,
) -> HistoryReport:
    """Run ``days`` of simulated traffic (growing to about ``calls_per_day`` a day) through
    ``svc``'s pipeline, dated over the past ``days`` days, and flush it to the database.

    ``svc`` must be started (``await svc.start()``) with its upstreams reachable.
    """
    rng = random.Random(seed)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    first_day = now - now % DAY - (days - 1) * DAY
    keys = await _accounts(svc)
    names = list(models or _chat_models(svc, datetime.fromtimestamp(first_day / 1000, UTC)))
    if not names:
        raise ValueError("no priced chat model is served: nothing to simulate")
    report = HistoryReport(first_ms=first_day)
    stand_ins = _stand_ins(svc)
    sem = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def run(call: Call, cancel_after: int | None) -> None:
        async with sem:
            status = await _one(svc, call, cancel_after, stand_ins)
        report.by_status[status] = report.by_status.get(status, 0) + 1

    for d in range(days):
        day_ms = first_day + d * DAY
        weights = _model_weights(names, d, days, rng)
        tasks = []
        for _ in range(_calls_on(d, days, calls_per_day, rng, day_ms)):
            hour = rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
            ts = day_ms + hour * 3_600_000 + rng.randrange(3_600_000)
            if ts >= now:  # today: only the hours that have passed
                ts = day_ms + rng.randrange(max(1, now - day_ms))
            key = rng.choices([k for k, _ in keys], weights=[w for _, w in keys])[0]
            model = rng.choices(names, weights=weights)[0]
            call = _call(rng, key, model, ts)
            cancel = 2 if call.stream and rng.random() < 0.03 else None
            tasks.append(run(call, cancel))
        await asyncio.gather(*tasks)
        report.calls += len(tasks)
        report.last_ms = day_ms
    await svc.usage_writer.flush()
    report.seconds = time.perf_counter() - started
    return report


def _call(rng: random.Random, key: ApiKey, model: str, ts_ms: int) -> Call:
    stream = rng.random() < 0.35
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": _prompt(rng, key.org_id or "")}],
        "max_tokens": rng.choice([64, 64, 256, 1024]),
    }
    if rng.random() < 0.015:  # a client error the vendor rejects
        body["max_tokens"] = -1
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return Call(
        endpoint="chat",
        dialect="openai",
        body=body,
        model=model,
        stream=stream,
        key=key,
        wants_usage=stream,
        ts_ms=ts_ms,
    )
