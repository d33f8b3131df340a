"""Loading one system: wrk for throughput and saturated latency, the open-loop client for
latency at a fixed rate, /proc for CPU per request and memory."""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import install
import orjson
import procstat
from systems import BENCH, MAIN_BIN, MODES, Server, request_body

#: The rate latency targets are stated at.
TARGET_RATE = 1000.0


@dataclass(frozen=True)
class Plan:
    connections: int = 32
    threads: int = 1
    warmup_s: float = 3.0
    duration_s: float = 15.0
    fixed_s: float = 10.0
    fixed_warmup_s: float = 1.0
    rate: float = TARGET_RATE


def _headers_text(headers: dict[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in headers.items())


def run_wrk(
    url: str,
    headers: dict[str, str],
    body_file: Path,
    seconds: float,
    plan: Plan,
    rotate: Path | None = None,
) -> dict[str, Any]:
    """One wrk run; its Lua ``done()`` prints a JSON line, parsed here. With ``rotate``
    each request adds the next of that file's header lines (a key per tenant)."""
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file), BENCH_HEADERS=_headers_text(headers))
    if rotate is not None:
        env["BENCH_ROTATE_FILE"] = str(rotate)
    cmd = [
        "wrk",
        f"-t{plan.threads}",
        f"-c{plan.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "chat.lua"),
        url,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in p.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            raw: dict[str, Any] = orjson.loads(line.removeprefix("BENCHJSON "))
            lat = raw["latency_us"]
            secs = raw["duration_us"] / 1e6
            return {
                "requests": raw["requests"],
                "seconds": round(secs, 3),
                "rps": raw["requests"] / secs if secs else 0.0,
                "errors": raw["errors"],
                "latency_ms": {
                    "mean": lat["mean"] / 1000,
                    "p50": lat["50"] / 1000,
                    "p90": lat["90"] / 1000,
                    "p99": lat["99"] / 1000,
                    "p99.9": lat["99.9"] / 1000,
                    "max": lat["max"] / 1000,
                },
            }
    raise RuntimeError(f"wrk gave no summary (rc {p.returncode}): {p.stderr.strip()[-400:]}")


@functools.cache
def openloop_cmd() -> tuple[str, ...]:
    """The open-loop client: the C one (built on first use), else the Python one.

    The Python client cost about as much CPU per request as the systems it measured (some
    350 µs here, on the same two cores) and its own loop's stalls were in every latency;
    the C one costs about 15 µs of user time (the rest is the kernel's loopback work, the
    same for any client)."""
    built = install.openloop_client()
    if built.ok and built.path is not None:
        return (str(built.path),)
    print(f"  C open-loop client not available ({built.reason}); using openloop.py", flush=True)
    return (str(MAIN_BIN / "python"), str(BENCH / "openloop.py"))


def run_openloop(
    url: str,
    headers: dict[str, str],
    body_file: Path,
    rate: float,
    seconds: float,
    warmup: float,
    rotate: Path | None = None,
) -> dict[str, Any]:
    cmd = [
        *openloop_cmd(),
        "--url",
        url,
        "--body-file",
        str(body_file),
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--warmup",
        str(warmup),
    ]
    for k, v in headers.items():
        cmd += ["--header", f"{k}: {v}"]
    # Only the C client rotates keys; the Python one sends the one key (recorded).
    rotating = rotate is not None and not cmd[0].endswith("python")
    if rotating:
        cmd += ["--rotate-file", str(rotate)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
    if p.returncode != 0:
        raise RuntimeError(f"open-loop client failed: {p.stderr.strip()[-400:]}")
    result: dict[str, Any] = orjson.loads(p.stdout)
    result["rotated"] = rotating
    return result


def fixed_rate_for(rps: float, plan: Plan) -> float:
    """The target rate when the system sustains it with room; else half what it managed."""
    if rps >= plan.rate * 1.5:
        return plan.rate
    return max(5.0, float(int(rps * 0.5)))


def measure_mode(
    server: Server, mode: str, workdir: Path, plan: Plan, body: bytes | None = None
) -> dict[str, Any]:
    load = measure_load(server, mode, workdir, plan, body)
    body_file = _body_file(workdir, mode, body)
    url, headers = server.urls[mode], server.headers[mode]
    time.sleep(0.5)
    rate = fixed_rate_for(load["rps"], plan)
    print(f"  {server.name}/{mode}: fixed rate {rate:.0f}/s for {plan.fixed_s:.0f} s", flush=True)
    ticks, sched = procstat.machine_ticks(), procstat.sched_ns(server.pid)
    fixed = run_openloop(
        url, headers, body_file, rate, plan.fixed_s, plan.fixed_warmup_s, server.rotate_file
    )
    fixed["steal_pct"] = procstat.steal_pct(ticks, procstat.machine_ticks())
    ran, waited = (b - a for a, b in zip(sched, procstat.sched_ns(server.pid), strict=True))
    if fixed.get("ok"):
        # Both per request answered (the warm-up's included: it ran in the same window).
        n = fixed["ok"] * (1 + plan.fixed_warmup_s / plan.fixed_s)
        fixed["cpu_us_per_req"] = ran / n / 1000
        fixed["runq_wait_us_per_req"] = waited / n / 1000
    lat = fixed["latency_ms"]
    # No answer at all (a system failing every request) has no percentiles: say so.
    pcts = (
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
        if lat.get("p50") is not None and lat.get("p99") is not None
        else "no latencies (no request answered)"
    )
    print(
        f"    {pcts}, {fixed['ok']}/{fixed['sent']} ok, {fixed['steal_pct']:.0f}% stolen",
        flush=True,
    )
    return {"load": load, "fixed": fixed}


def _body_file(workdir: Path, mode: str, body: bytes | None) -> Path:
    """The request body's file (the small request's unless ``body`` is given)."""
    data = body if body is not None else request_body(mode)
    path = workdir / f"body-{mode}-{len(data)}.json"
    if not path.exists():
        path.write_bytes(data)
    return path


def measure_load(
    server: Server, mode: str, workdir: Path, plan: Plan, body: bytes | None = None
) -> dict[str, Any]:
    """wrk at saturation after a warm-up: req/s, latency, server CPU per request (and of
    the database processes it makes work, when it has any), memory under load."""
    body_file = _body_file(workdir, mode, body)
    url, headers, rotate = server.urls[mode], server.headers[mode], server.rotate_file
    print(f"  {server.name}/{mode}: warm-up {plan.warmup_s:.0f} s", flush=True)
    run_wrk(url, headers, body_file, plan.warmup_s, plan, rotate)
    time.sleep(0.5)
    others = {name: a.sample() for name, a in server.attributed.items()}
    cpu0, ticks = procstat.cpu_seconds(server.pid), procstat.machine_ticks()
    with procstat.RssSampler(server.pid) as rss:
        load = run_wrk(url, headers, body_file, plan.duration_s, plan, rotate)
    cpu1 = procstat.cpu_seconds(server.pid)
    load["steal_pct"] = procstat.steal_pct(ticks, procstat.machine_ticks())
    served = load["requests"]
    load["server_cpu_s"] = round(cpu1 - cpu0, 3)
    load["cpu_us_per_req"] = (cpu1 - cpu0) / served * 1e6 if served else None
    # The database's CPU is part of the bill: PostgreSQL's backends on the bench database
    # and the bench's own Redis, charged to the requests served meanwhile.
    load["attributed_us_per_req"] = {
        name: a.delta(others[name], a.sample()) / served * 1e6 if served else None
        for name, a in server.attributed.items()
    }
    load["cpu_all_us_per_req"] = (
        load["cpu_us_per_req"] + sum(v or 0 for v in load["attributed_us_per_req"].values())
        if served
        else None
    )
    load["rss_load_mb"] = round(rss.tree_mb, 1)
    load["rss_load_largest_mb"] = round(rss.largest_mb, 1)
    bad = sum(load["errors"].values())
    extra = "".join(
        f" + {name} {v:.0f}" for name, v in load["attributed_us_per_req"].items() if v is not None
    )
    print(
        f"    {load['rps']:.0f} req/s, p99 {load['latency_ms']['p99']:.2f} ms, "
        f"{load['cpu_us_per_req'] or 0:.0f}{extra} µs CPU/req, {bad} errors, "
        f"RSS under load {load['rss_load_mb']:.0f} MB, "
        f"{load['steal_pct']:.0f}% of the machine's CPU stolen",
        flush=True,
    )
    return load


#: A server still busier than this (CPU ms a second) is still starting up.
SETTLED_MS_PER_S = 30.0
#: How long a server is given to finish starting before its idle cost is measured.
SETTLE_MAX_S = 20.0


def settle(server: Server, max_s: float = SETTLE_MAX_S) -> float:
    """Wait until the server's CPU drops to background work (a second under
    :data:`SETTLED_MS_PER_S`), at most ``max_s``; returns how long that took. Loading
    10,000 orgs and keys keeps a gateway busy for its first seconds (110-160 ms of CPU a
    second, against 10 once settled): measured then, idle cost read as startup cost."""
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        cpu0 = procstat.cpu_seconds(server.pid)
        time.sleep(1.0)
        if (procstat.cpu_seconds(server.pid) - cpu0) * 1000 < SETTLED_MS_PER_S:
            break
    return time.monotonic() - start


def measure_idle(server: Server, seconds: float) -> dict[str, float]:
    """CPU ms per second with no requests, once started (see :func:`settle`): the
    server's background work (refreshes, the writer, roll-ups) and its database's,
    which should not grow with tenants."""
    settled_s = settle(server)
    others = {name: a.sample() for name, a in server.attributed.items()}
    cpu0 = procstat.cpu_seconds(server.pid)
    time.sleep(seconds)
    out = {"server": (procstat.cpu_seconds(server.pid) - cpu0) / seconds * 1000}
    for name, a in server.attributed.items():
        out[name] = a.delta(others[name], a.sample()) / seconds * 1000
    print(
        f"  {server.name}: idle "
        + ", ".join(f"{name} {v:.1f}" for name, v in out.items())
        + f" ms CPU/s (after {settled_s:.0f} s settling)",
        flush=True,
    )
    return out


def measure(
    server: Server,
    workdir: Path,
    plan: Plan,
    mode_errors: dict[str, str],
    modes: tuple[str, ...] = MODES,
    body: Callable[[str], bytes | None] = lambda mode: None,
) -> dict[str, Any]:
    """Every mode that passed its smoke test against one running server, with its memory
    at rest and at peak; the modes that did not are listed with the reason."""
    time.sleep(1.0)
    result: dict[str, Any] = {
        # Others' work on a shared machine shows up here: quote CPU/req, not req/s.
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "rss_rest_mb": round(procstat.rss_mb(server.pid), 1),
        # With several workers the tree holds a supervisor and N gateways: the target is
        # per gateway process.
        "rss_rest_largest_mb": round(procstat.largest_rss_mb(server.pid), 1),
        "modes": {},
        "mode_errors": mode_errors,
    }
    result["idle_ms_per_s"] = measure_idle(server, min(plan.duration_s, 5.0))
    for mode in modes:
        if mode not in mode_errors:
            result["modes"][mode] = measure_mode(server, mode, workdir, plan, body(mode))
    loads = [m["load"] for m in result["modes"].values()]
    result["rss_load_mb"] = max((x["rss_load_mb"] for x in loads), default=None)
    result["rss_load_largest_mb"] = max((x["rss_load_largest_mb"] for x in loads), default=None)
    time.sleep(1.0)
    result["rss_after_mb"] = round(procstat.rss_mb(server.pid), 1)
    result["peak_rss_mb"] = round(procstat.peak_rss_mb(server.pid), 1)
    return result
