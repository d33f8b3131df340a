"""An open-loop client: sends at a fixed rate whatever the answers do, records latencies.

The bench builds and prefers bench/openloop.c, which does the same job and prints the
same JSON; this one is its fallback where no C compiler can be had (it costs about as
much CPU per request as the systems it loads).

wrk2 (wrk with a constant rate) is not in Debian, and wrk with a Lua ``delay()`` is still
closed-loop per connection (a slow answer delays the next send, hiding the stall). This
client schedules request i at ``start + i / rate`` and never waits for answers before
sending, so a slow server shows up as latency, not as a lower rate. Latency is timed
from the moment a request is actually sent to the last byte of its answer; how late
sends were against the schedule is reported too (``lag``), so a client that could not
keep up is visible. In-flight requests are capped; sends over the cap are counted as
dropped. Output: one JSON object on stdout.

    python bench/openloop.py --url URL --body-file F --rate 1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


async def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    duration: float,
    max_inflight: int,
    timeout: float,
    warmup: float,
) -> dict[str, object]:
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    dropped = 0
    inflight = 0
    connector = aiohttp.TCPConnector(limit=max_inflight, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(record: bool) -> None:
            nonlocal inflight
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if record:
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 200:
                            latencies.append(time.perf_counter() - t0)
            except (aiohttp.ClientError, TimeoutError) as e:
                name = type(e).__name__
                errors[name] = errors.get(name, 0) + 1
            finally:
                inflight -= 1

        tasks: set[asyncio.Task[None]] = set()
        # The warm-up sends at the same rate; its answers (new connections, first-call
        # costs) are not counted.
        skip = int(rate * warmup)
        total = int(rate * duration)
        start = time.perf_counter() + 0.05
        for i in range(skip + total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            record = i >= skip
            if record:
                lags.append(max(0.0, time.perf_counter() - due))
            if inflight >= max_inflight:
                dropped += 1 if record else 0
                continue
            inflight += 1
            task = asyncio.create_task(one(record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = time.perf_counter() - start - skip / rate
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()

    latencies.sort()
    lags.sort()
    ms = 1000.0
    return {
        "rate": rate,
        "duration_s": round(elapsed, 3),
        "sent": total - dropped,
        "ok": len(latencies),
        "dropped": dropped,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "latency_ms": {
            "p50": percentile(latencies, 50) * ms,
            "p90": percentile(latencies, 90) * ms,
            "p99": percentile(latencies, 99) * ms,
            "p99.9": percentile(latencies, 99.9) * ms,
            "max": (latencies[-1] * ms) if latencies else float("nan"),
        },
        "lag_ms": {"p50": percentile(lags, 50) * ms, "p99": percentile(lags, 99) * ms},
        "client": "openloop.py",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not counted")
    p.add_argument("--max-inflight", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    args = p.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        sys.exit("openloop: only loopback targets are allowed")
    headers = {"Content-Type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    with open(args.body_file, "rb") as f:
        body = f.read()
    result = uvloop.run(
        run(
            args.url,
            body,
            headers,
            args.rate,
            args.duration,
            args.max_inflight,
            args.timeout,
            args.warmup,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
