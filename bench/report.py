"""RESULTS.md from a run's results: tables per mode, ratios, targets met or missed."""

from __future__ import annotations

import math
from typing import Any

from measure import TARGET_RATE
from systems import BENCH

TOKENOMY = ("tokenomy-sqlite", "tokenomy-pg", "tokenomy-pg-2w")
CPU_TARGET = 1.7  # tokenomy CPU per request over the bare relay's
P99_ADDED_TARGET_MS = 2.0  # at TARGET_RATE req/s, over direct
RSS_TARGET_MB = 100.0
RSS_LOAD_TARGET_MB = 120.0  # under load, per gateway process
MODE_TITLES = {
    "json": "Non-streaming",
    "sse": "Streaming (SSE, 12 content chunks + usage)",
    "long": "Streaming, 2,000 events",
}


def _f(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _mode(sys_result: dict[str, Any], mode: str) -> dict[str, Any] | None:
    if not sys_result.get("available"):
        return None
    m: dict[str, Any] | None = sys_result.get("modes", {}).get(mode)
    return m


def _cpu(results: dict[str, Any], name: str, mode: str) -> float | None:
    """CPU per request with everything counted (the server's database too, when the
    results have it)."""
    m = _mode(results["systems"].get(name, {}), mode)
    if not m:
        return None
    cpu: float | None = m["load"].get("cpu_all_us_per_req", m["load"]["cpu_us_per_req"])
    return cpu


def _db_cpu(load: dict[str, Any]) -> str:
    """PostgreSQL's and Redis's CPU per request charged to the run ('–' when none)."""
    att = load.get("attributed_us_per_req") or {}
    parts = [f"{name[:2]} {_f(v)}" for name, v in att.items() if v is not None]
    return ", ".join(parts) if parts else "–"


def _bare_cpu(results: dict[str, Any], name: str, mode: str) -> float | None:
    """The bare relay's CPU per request measured just before ``name`` (the run-wide
    figure for results that predate the paired measurement)."""
    paired = results["systems"].get(name, {}).get("paired_bare", {}).get(mode)
    return paired if paired else _cpu(results, "bare", mode)


def cpu_ratios(results: dict[str, Any], name: str, mode: str) -> list[float]:
    """tokenomy ÷ bare relay CPU per request for each pair measured side by side."""
    pairs = results["systems"].get(name, {}).get("cpu_pairs", {}).get(mode) or []
    return [tok / bare for tok, bare in pairs if tok and bare]


def cpu_ratio(results: dict[str, Any], name: str, mode: str) -> float | None:
    """The median of the pairs' ratios (the single pair's for older results)."""
    ratios = sorted(cpu_ratios(results, name, mode))
    if ratios:
        mid = len(ratios) // 2
        return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    cpu, bare = _cpu(results, name, mode), _bare_cpu(results, name, mode)
    return cpu / bare if cpu and bare else None


def _pairs_note(results: dict[str, Any], name: str, mode: str) -> str:
    ratios = cpu_ratios(results, name, mode)
    if len(ratios) < 2:
        return ""
    return f" (median of {len(ratios)} pairs, {min(ratios):.2f}–{max(ratios):.2f}×)"


def _rps(results: dict[str, Any], name: str, mode: str) -> float | None:
    m = _mode(results["systems"].get(name, {}), mode)
    return m["load"]["rps"] if m else None


def p99_added_fixed(results: dict[str, Any], name: str, mode: str) -> float | None:
    """p99 at the fixed rate over direct's; None unless both ran at the same rate."""
    m = _mode(results["systems"].get(name, {}), mode)
    d = _mode(results["systems"].get("direct", {}), mode)
    if not m or not d or m["fixed"]["rate"] != d["fixed"]["rate"]:
        return None
    p99: float = m["fixed"]["latency_ms"]["p99"] - d["fixed"]["latency_ms"]["p99"]
    return p99


def _idle(s: dict[str, Any]) -> str:
    """CPU ms a second with no load: the server's, then its database's."""
    idle = s.get("idle_ms_per_s")
    if not idle:
        return "–"
    rest = [f"{k[:2]} {_f(v, 1)}" for k, v in idle.items() if k != "server"]
    return _f(idle.get("server"), 1) + (f" ({', '.join(rest)})" if rest else "")


def _idle_md(results: dict[str, Any]) -> list[str]:
    """Idle CPU of each tokenomy run: with 10,000 tenants it should stay near one's."""
    runs = [("base", results["systems"])] + [
        (k, w["systems"]) for k, w in (results.get("workloads") or {}).items()
    ]
    rows = [
        f"| {wname} | {name} | {_idle(s)} |"
        for wname, systems in runs
        for name, s in systems.items()
        if name in TOKENOMY and s.get("idle_ms_per_s")
    ]
    if not rows:
        return []
    return [
        "## Idle cost",
        "",
        "CPU ms per second with no requests, measured after start and before any load, "
        "once the server has settled (its first second under 30 ms of CPU, at most 20 s "
        "after it answers: loading 10,000 tenants takes a few): the server (refreshes, "
        "writer, roll-ups) and its database.",
        "",
        "| workload | system | idle CPU ms/s (server, database) |",
        "|---|---|--:|",
        *rows,
        "",
    ]


def _workloads(results: dict[str, Any]) -> list[str]:
    """One row per workload, system and mode: the figures issue-sized workloads need."""
    wls = results.get("workloads") or {}
    if not wls:
        return []
    out = [
        "## Workloads",
        "",
        "Each on the bare relays and tokenomy; tokenomy's CPU counts the PostgreSQL backends "
        "on its database and the bench's own Redis (all counted), and its ratio is against "
        "the aiohttp bare relay measured just before it (median of the pairs). 'lean relay' "
        "is the bare relay on tokenomy's own HTTP server and client: tokenomy over it is the "
        "pipeline's own cost.",
        "",
        "| workload | system | mode | req/s | server CPU µs/req | + database µs/req "
        "| CPU µs/req, all counted | ÷ bare relay beside it | ÷ lean relay "
        "| rate req/s | p99 ms @rate | p99 added ms @rate | RSS rest MB | RSS under load MB "
        "| idle CPU ms/s (server, database) | errors |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for wname, w in wls.items():
        sub = {"systems": w["systems"]}
        for name, s in w["systems"].items():
            for mode in w["modes"]:
                m = _mode(s, mode)
                if m is None:
                    why = s.get("short_reason") or s.get("mode_errors", {}).get(mode, "")
                    why = why.replace("|", "/")[:160]
                    out.append(f"| {wname} | {name} | {mode} | not available ({why}) |{' |' * 12}")
                    continue
                load, fixed = m["load"], m["fixed"]
                ratio = cpu_ratio(sub, name, mode) if name.startswith("tokenomy") else None
                lean = (
                    _ratio(_cpu(sub, name, mode), _cpu(sub, "bare-lean", mode))
                    if name.startswith("tokenomy")
                    else "–"
                )
                errors = sum(load["errors"].values()) + sum(fixed["errors"].values())
                errors += fixed["dropped"]
                errors += sum(v for k, v in fixed["statuses"].items() if k != "200")
                added = p99_added_fixed(sub, name, mode) if name != "direct" else None
                out.append(
                    f"| {wname} | {name} | {mode} | {_f(load['rps'])} "
                    f"| {_f(load['cpu_us_per_req'])} | {_db_cpu(load)} "
                    f"| **{_f(_cpu(sub, name, mode))}** "
                    f"| {_f(ratio, 2) + '×' + _pairs_note(sub, name, mode) if ratio else '–'} "
                    f"| {lean} | {_f(fixed['rate'])} | {_f(fixed['latency_ms']['p99'], 2)} "
                    f"| {_f(added, 2)} | {_f(s['rss_rest_mb'])} "
                    f"| {_f(load.get('rss_load_mb'))} | {_idle(s)} | {errors} |"
                )
    labels = "; ".join(f"{k}: {w['label']}" for k, w in wls.items())
    return [*out, "", f"Workloads: {labels}.", ""]


def _openloop_client(results: dict[str, Any]) -> str:
    """Which open-loop client measured the fixed-rate figures (results before the C client
    name none: they came from the Python one)."""
    used = {
        (m.get("fixed") or {}).get("client", "openloop.py")
        for s in results["systems"].values()
        for m in (s.get("modes") or {}).values()
        if m.get("fixed")
    }
    if used == {"openloop.c"}:
        return "bench/openloop.c, an open-loop client in C,"
    if used <= {"openloop.py"}:
        return "bench/openloop.py, an open-loop asyncio client,"
    return "bench/openloop.c or, where it could not be built, bench/openloop.py (see the JSON)"


def _table(results: dict[str, Any], mode: str) -> list[str]:
    direct = _mode(results["systems"].get("direct", {}), mode)
    out = [
        f"### {MODE_TITLES[mode]}",
        "",
        "| system | req/s | p50 ms | p99 ms | p99 added ms | server CPU µs/req "
        "| + database µs/req (po PostgreSQL, re Redis) | **CPU µs/req, all counted** "
        "| rate req/s | p50 ms @rate | p99 ms @rate | p99 added ms @rate | RSS rest MB "
        "| RSS under load MB | peak RSS MB | errors | CPU stolen % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in results["systems"].items():
        m = _mode(s, mode)
        if m is None:
            why = s.get("short_reason") or s.get("mode_errors", {}).get(mode, "")
            why = why.replace("|", "/")[:160]
            out.append(f"| {s['label']} | not available ({why}) |{' |' * 15}")
            continue
        load, fixed = m["load"], m["fixed"]
        added = (
            load["latency_ms"]["p99"] - direct["load"]["latency_ms"]["p99"]
            if direct and name != "direct"
            else None
        )
        fixed_added = p99_added_fixed(results, name, mode) if name != "direct" else None
        errors = sum(load["errors"].values()) + sum(fixed["errors"].values()) + fixed["dropped"]
        errors += sum(v for k, v in fixed["statuses"].items() if k != "200")
        out.append(
            f"| {s['label']} | {_f(load['rps'])} | {_f(load['latency_ms']['p50'], 2)} "
            f"| {_f(load['latency_ms']['p99'], 2)} | {_f(added, 2)} "
            f"| {_f(load['cpu_us_per_req'])} | {_db_cpu(load)} "
            f"| **{_f(load.get('cpu_all_us_per_req', load['cpu_us_per_req']))}** "
            f"| {_f(fixed['rate'])} "
            f"| {_f(fixed['latency_ms']['p50'], 2)} | {_f(fixed['latency_ms']['p99'], 2)} "
            f"| {_f(fixed_added, 2)} | {_f(s['rss_rest_mb'])} | {_f(load.get('rss_load_mb'))} "
            f"| {_f(s['peak_rss_mb'])} | {errors} | {_stolen(load, fixed)} |"
        )
    return [*out, ""]


def _stolen(load: dict[str, Any], fixed: dict[str, Any]) -> str:
    """The hypervisor's share of the machine's CPU while wrk ran / while the open-loop
    client ran (absent from results taken before it was recorded)."""
    if "steal_pct" not in load:
        return "–"
    return f"{load['steal_pct']:.0f} / {fixed.get('steal_pct', 0):.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def _ratios(results: dict[str, Any]) -> list[str]:
    out = [
        "## Ratios",
        "",
        "CPU per request (lower is better) and requests/s (higher is better), tokenomy over "
        "each peer.",
        "",
        "| tokenomy run | mode | tokenomy CPU µs/req (all counted) | bare relay beside it | "
        "CPU/req ÷ bare relay (target ≤ 1.7×) | CPU/req ÷ lean relay | CPU/req ÷ LiteLLM "
        "| CPU/req ÷ Portkey | req/s ÷ bare relay | req/s ÷ LiteLLM | req/s ÷ Portkey |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in TOKENOMY:
        if not results["systems"].get(t, {}).get("available"):
            continue
        for mode in ("json", "sse"):
            median = cpu_ratio(results, t, mode)
            if median is None and _cpu(results, t, mode) is None:
                continue
            cpu = [_f(median, 2) + "×" + _pairs_note(results, t, mode) if median else "–"] + [
                _ratio(_cpu(results, t, mode), _cpu(results, p, mode))
                for p in ("bare-lean", "litellm", "portkey")
            ]
            rps = [
                _ratio(_rps(results, t, mode), _rps(results, p, mode))
                for p in ("bare", "litellm", "portkey")
            ]
            own = f"{_f(_cpu(results, t, mode))} | {_f(_bare_cpu(results, t, mode))}"
            out.append(f"| {t} | {mode} | {own} | {' | '.join(cpu)} | {' | '.join(rps)} |")
    return [*out, ""]


def _scaling(results: dict[str, Any]) -> list[str]:
    """Two workers against one on the same backend: the --workers claim, measured."""
    one, two = "tokenomy-pg", "tokenomy-pg-2w"
    if not all(results["systems"].get(n, {}).get("available") for n in (one, two)):
        return []
    out = [
        "## Scale-out: 1 and 2 workers (PostgreSQL + Redis)",
        "",
        "wrk, nginx and the gateway share the machine's cores, so two workers cannot double "
        "throughput here; CPU per request shows what a second process costs.",
        "",
        "| mode | req/s, 1 worker | req/s, 2 workers | 2 ÷ 1 | CPU µs/req, 1 | CPU µs/req, 2 |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for mode in ("json", "sse"):
        r1, r2 = _rps(results, one, mode), _rps(results, two, mode)
        out.append(
            f"| {mode} | {_f(r1)} | {_f(r2)} | {_ratio(r2, r1)} "
            f"| {_f(_cpu(results, one, mode))} | {_f(_cpu(results, two, mode))} |"
        )
    return [*out, ""]


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The base runs' rows, then each workload's (its system named with the workload)."""
    rows = _targets(results, ("json", "sse"))
    for wname, w in (results.get("workloads") or {}).items():
        sub = {"systems": w["systems"]}
        for r in _targets(sub, tuple(w["modes"])):
            r["system"] = f"{r['system']} ({wname})"
            r["results"] = sub
            rows.append(r)
    return rows


def _targets(results: dict[str, Any], modes: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for t in TOKENOMY:
        s = results["systems"].get(t, {})
        if not s.get("available"):
            continue
        for mode in modes:
            if _mode(s, mode) is None:
                continue
            ratio = cpu_ratio(results, t, mode)
            added = p99_added_fixed(results, t, mode)
            m = _mode(s, mode)
            at_target = bool(m and m["fixed"]["rate"] == TARGET_RATE)
            rows.append(
                {
                    "system": t,
                    "mode": mode,
                    "cpu_ratio": ratio,
                    "cpu_met": None if ratio is None else ratio <= CPU_TARGET,
                    "p99_added_ms": added,
                    "p99_met": None
                    if added is None or not at_target
                    else added < P99_ADDED_TARGET_MS,
                    "rss_rest_mb": s["rss_rest_mb"],
                    # Older results have no per-process figure: judge the tree then.
                    "rss_largest_mb": s.get("rss_rest_largest_mb", s["rss_rest_mb"]),
                    "rss_met": s.get("rss_rest_largest_mb", s["rss_rest_mb"]) < RSS_TARGET_MB,
                    "rss_load_largest_mb": s.get("rss_load_largest_mb"),
                    "rss_load_met": None
                    if s.get("rss_load_largest_mb") is None
                    else s["rss_load_largest_mb"] < RSS_LOAD_TARGET_MB,
                    "results": results,
                }
            )
    return rows


def _p99_context(results: dict[str, Any], name: str, mode: str) -> str:
    """The p99 figure with what it must be read against: the bare relay's own p99 added
    in the same run, and the CPU the hypervisor took meanwhile."""
    m = _mode(results["systems"].get(name, {}), mode)
    if m is None:
        return "– ms"
    fixed = m["fixed"]
    if fixed["rate"] != TARGET_RATE:
        return f"measured at {_f(fixed['rate'])} req/s only: saturated below 1.5× the target rate"
    parts = [f"{_f(p99_added_fixed(results, name, mode), 2)} ms"]
    bare = p99_added_fixed(results, "bare", mode)
    if bare is not None:
        parts.append(f"bare relay {_f(bare, 2)} ms")
    if "steal_pct" in fixed:
        parts.append(f"{fixed['steal_pct']:.0f}% of the CPU stolen")
    if "runq_wait_us_per_req" in fixed:
        parts.append(
            f"{_f(fixed['cpu_us_per_req'])} µs CPU and {_f(fixed['runq_wait_us_per_req'])} µs "
            "waiting for a core per request"
        )
    return "; ".join(parts)


def _targets_md(results: dict[str, Any]) -> list[str]:
    out = [
        "## Targets",
        "",
        f"| tokenomy run | mode | CPU/req ≤ {CPU_TARGET}× bare relay "
        f"| p99 added < {P99_ADDED_TARGET_MS:g} ms at {TARGET_RATE:g} req/s "
        f"| RSS at rest < {RSS_TARGET_MB:g} MB, per gateway process "
        f"| RSS under load < {RSS_LOAD_TARGET_MB:g} MB, per gateway process |",
        "|---|---|---|---|---|---|",
    ]
    for r in targets(results):
        res, name = r["results"], r["system"].split(" (")[0]
        out.append(
            f"| {r['system']} | {r['mode']} | {_verdict(r['cpu_met'])} ({_f(r['cpu_ratio'], 2)}×"
            f"{_pairs_note(res, name, r['mode'])}) "
            f"| {_verdict(r['p99_met'])} ({_p99_context(res, name, r['mode'])}) "
            f"| {_verdict(r['rss_met'])} "
            f"({_f(r['rss_largest_mb'])} MB; tree {_f(r['rss_rest_mb'])} MB) "
            f"| {_verdict(r['rss_load_met'])} ({_f(r['rss_load_largest_mb'])} MB) |"
        )
    return [*out, ""]


def _profile_head(name: str, n: int = 12) -> list[str]:
    """The header and first ``n`` rows of a profile summary's own-time table."""
    path = BENCH / name
    if not path.exists():
        return ["(file missing)"]
    lines = path.read_text().splitlines()
    head: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("By stage"):
            end = lines.index("", i) if "" in lines[i:] else len(lines)
            head = [*lines[i:end], ""]
        if line.startswith("Top") and "own" in line:
            return head + lines[i : i + 2 + n]
    return head + lines[: 2 + n]


def render(results: dict[str, Any], notes: list[str]) -> str:
    m = results["machine"]
    p = results["plan"]
    out = [
        "# tokenomy benchmark results",
        "",
        f"Produced by `make bench` (`bench/run.py{' --quick' if results['quick'] else ''}`) "
        f"on {results['date']}. Raw figures: `bench/results/{results['json_name']}`.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores, {m['cpu']}, {m['mem_gb']:.1f} GB memory",
        f"- kernel {m['kernel']}, Python {m['python']}, {m['nginx']}, {m['wrk']}, node {m['node']}",
        f"- tokenomy at {results['tokenomy_rev']}",
        "",
        "## Method",
        "",
        "- Upstream: nginx (one worker) answering a fixed `chat.completion` with usage on one "
        "port and a fixed SSE stream on another; streaming requests go to the second.",
        f"- Each system runs as one worker process and is loaded alone: `wrk -t{p['threads']} "
        f"-c{p['connections']}` for {p['duration_s']:g} s after a {p['warmup_s']:g} s warm-up "
        f"(bench/chat.lua), so req/s and p50/p99 are at saturation on a 2-core machine where "
        f"wrk and the server share the cores.",
        "- **CPU µs/req, all counted**, the headline figure: utime+stime of the server process "
        "and all its descendants from /proc (plus reaped children), before and after the wrk "
        "run, divided by requests served; for tokenomy on PostgreSQL + Redis, plus the CPU of "
        "the PostgreSQL backends connected to the bench database and of the bench's own "
        "redis-server over the same window (a backend that exits mid-run is missed; the "
        "gateway keeps a pool).",
        "- RSS under load: the largest VmRSS of the process tree sampled every 0.5 s while wrk "
        "ran.",
        f"- Latency at a fixed rate: {_openloop_client(results)} (wrk2 is not "
        f"in Debian; wrk with a Lua delay stays closed-loop per connection) sends at "
        f"{p['rate']:g} req/s for {p['fixed_s']:g} s, timed from send to last byte. A system that "
        f"cannot sustain 1.5× that rate is measured at half its saturated throughput instead "
        f"(shown in the rate column; then no 'added' figure is given).",
        "- 'p99 added' is the system's p99 minus direct nginx's p99 under the same load.",
        "- 'CPU stolen %': the share of the machine's CPU time that /proc/stat counts as "
        "stolen by the hypervisor (other guests on the same host) while wrk ran / while the "
        "open-loop client ran. While it is high every figure is slower and noisier, and a "
        "vCPU taken away for milliseconds is a latency spike whatever the system does.",
        "- At the fixed rate the targets table also gives the server's CPU per request there "
        "(higher than at saturation: fewer requests share each wake-up) and the time its "
        "threads were ready to run but every core was busy (schedstat): on two cores shared "
        "with the load client, nginx, PostgreSQL and Redis, that wait is part of every "
        "latency.",
        "- CPU ratios to the bare relay use the bare relay measured again (wrk only) just "
        "before each tokenomy run: this machine's speed drifts by tens of percent within "
        f"minutes. With `--repeat N` (here {results.get('repeat', 1)}) each one-worker tokenomy "
        "run is started N times, each after its own bare relay run, and the ratio is the "
        "median of the N pairs (their range is given); the CPU µs/req columns are the first "
        "pair's.",
        "- RSS at rest: VmRSS of the process tree after start and two smoke requests; "
        "peak RSS: VmHWM at the end of both modes (so the same in both tables). The RSS "
        "target is judged per gateway process (with 2 workers the tree also holds the "
        "supervisor and multiprocessing's resource tracker).",
        "- tokenomy answers the inference routes with its own lean HTTP/1.1 server "
        "(`src/tokenomy/api/lean_server.py`) in front of aiohttp, which serves every other "
        "route; the bare relay is aiohttp's server throughout.",
        "",
        "## Results",
        "",
    ]
    for mode in ("json", "sse"):
        out += _table(results, mode)
    out += _ratios(results)
    out += _workloads(results)
    out += _idle_md(results)
    out += _targets_md(results)
    out += _scaling(results)
    missing = [
        (s["label"], s.get("short_reason") or s.get("reason", "unknown"))
        for s in results["systems"].values()
        if not s.get("available")
    ]
    missing += [
        (f"{s['label']}, {mode}", why)
        for s in results["systems"].values()
        if s.get("available")
        for mode, why in s.get("mode_errors", {}).items()
    ]
    if missing:
        out += ["## Not available", ""]
        out += [f"- {label}: not available ({reason})" for label, reason in missing]
        out.append("")
    prof = results.get("profile") or {}
    if prof:
        out += ["## Profiles", ""]
        for mode, d in prof.items():
            if "file" in d:
                out.append(
                    f"- {mode}: `bench/{d['file']}` ({d['tool']}: samples by stage, then top "
                    "functions by cumulative and own samples); by stage and the top of its "
                    "own-time list:"
                )
                head = [f"  {ln}" for ln in _profile_head(d["file"])]
                out += ["", "  ```", *head, "  ```", ""]
            else:
                out.append(f"- {mode}: {d['tool']} failed: {d.get('error', '')[:300]}")
        out.append("")
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)
