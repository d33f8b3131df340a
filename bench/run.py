"""`make bench`: tokenomy against a bare relay and its peers, on a fixed-answer upstream.

Installs what it needs (nginx and wrk from Debian, LiteLLM and Portkey into bench-only
environments, py-spy for the profile), starts nginx as the upstream, loads each system
alone with the same requests, profiles tokenomy, and writes bench/RESULTS.md and
bench/results/*.json. Every server it starts is stopped when it exits; traffic goes to
127.0.0.1 only.

    python bench/run.py                 # the full run (several minutes)
    python bench/run.py --quick         # a smoke run with short durations
    python bench/run.py --only bare,tokenomy-sqlite
    python bench/run.py --quick --workloads orgs1k --only bare,tokenomy-pg
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import install
import orjson
import profiling
import report
import systems
from measure import Plan, measure, measure_load
from systems import BENCH, ROOT, Ctx, Server, StartError
from upstream import nginx_config
from workloads import BASE, SYSTEMS, WORKLOADS, Workload, prompt

ALL = [
    "direct",
    "bare",
    "bare-lean",
    "tokenomy-sqlite",
    "tokenomy-pg",
    "tokenomy-pg-2w",
    "litellm",
    "portkey",
]
LABELS = {
    "direct": "nginx direct (the upstream itself; baseline)",
    "bare": "bare Python relay (aiohttp + uvloop + orjson)",
    "bare-lean": "bare relay on tokenomy's own HTTP server and client (no pipeline)",
    "tokenomy-sqlite": "tokenomy, full pipeline, SQLite",
    "tokenomy-pg": "tokenomy, full pipeline, PostgreSQL + Redis",
    "tokenomy-pg-2w": "tokenomy, full pipeline, PostgreSQL + Redis, 2 workers",
    "litellm": "LiteLLM proxy{v} (no database)",
    "portkey": "Portkey gateway{v} (Node)",
}
QUICK = Plan(warmup_s=1, duration_s=3, fixed_s=2, fixed_warmup_s=0.5)
FULL = Plan()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short durations (a smoke run)")
    p.add_argument(
        "--only",
        help=f"comma-separated systems: {','.join(ALL)} ('tokenomy' = both tokenomy runs)",
    )
    p.add_argument(
        "--workloads",
        help=f"comma-separated workloads: {','.join(WORKLOADS)} (default: all, or base only "
        "with --quick; 'base' is the one every system runs, the others run on the bare "
        "relays and tokenomy)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the profiling run")
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="CPU pairs (bare relay, then tokenomy) per tokenomy run; the ratio is their "
        "median (default 3, or 1 with --quick)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    p.add_argument(
        "--render", metavar="JSON", help="only rewrite the Markdown from a saved results file"
    )
    args = p.parse_args()
    if args.only:
        wanted: list[str] = []
        for name in args.only.split(","):
            name = name.strip()
            names = [n for n in ALL if n.startswith("tokenomy")] if name == "tokenomy" else [name]
            for n in names:
                if n not in ALL:
                    p.error(f"unknown system {n!r}; choose from {', '.join(ALL)}")
                wanted.append(n)
        # direct is the baseline every 'added' figure needs.
        args.systems = [n for n in ALL if n in wanted or n == "direct"]
    else:
        args.systems = list(ALL)
    if not args.workloads:
        # A quick run stays a few minutes: the other workloads are asked for by name.
        args.workloads = ["base"] if args.quick else list(WORKLOADS)
    else:
        args.workloads = [w.strip() for w in args.workloads.split(",")]
        for w in args.workloads:
            if w not in WORKLOADS:
                p.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    return args


def _cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": mem_kb / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _cmd_out(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _cmd_out(["wrk", "-v"]).split(" [")[0],
        "node": _cmd_out(["node", "--version"]),
    }


def tokenomy_rev() -> str:
    rev = _cmd_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "status", "--porcelain", "--", "src"])
    return f"{rev}" + (" plus uncommitted changes in src/" if dirty not in ("?", "") else "")


def start_nginx(workdir: Path) -> tuple[Ctx, int]:
    ctx = Ctx(workdir, systems.free_port(), systems.free_port(), systems.free_port())
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, ctx.json_port, ctx.sse_port, ctx.long_port))
    proc = systems.spawn(["nginx", "-c", str(conf), "-p", str(workdir)], workdir / "nginx.log")
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ctx.sse_port), 0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "nginx-error.log").read_text(errors="replace")[-800:]
                raise SystemExit(f"nginx did not start: {log}") from None
            time.sleep(0.1)
    return ctx, proc.pid


def start_redis(ctx: Ctx) -> None:
    """The bench's own redis-server (no persistence), so all of its CPU is the run's;
    without one the shared Redis (db 15) is used and its CPU is not counted."""
    exe = shutil.which("redis-server")
    if exe is None:
        return
    port = systems.free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = systems.spawn(cmd, ctx.workdir / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                ctx.redis_url, ctx.redis_pid = f"redis://127.0.0.1:{port}/0", proc.pid
                return
        except OSError:
            time.sleep(0.1)
    print("  redis-server did not start; using the shared Redis", file=sys.stderr, flush=True)


def run_one(
    name: str,
    ctx: Ctx,
    nginx_pid: int,
    plan: Plan,
    repeat: int,
    wl: Workload,
    with_bare: bool,
) -> dict[str, Any]:
    """One system on one workload; a tokenomy run with its bare relay beside it."""
    paired = None
    if name.startswith("tokenomy") and with_bare:
        paired = paired_bare(ctx, nginx_pid, plan, wl)
    res = run_system(name, ctx, nginx_pid, plan, wl)
    if paired:
        res["paired_bare"] = paired
        if res.get("available"):
            # The ratio target is one worker's; two workers are measured once.
            n = 1 if name.endswith("-2w") else repeat
            res["cpu_pairs"] = cpu_pairs(name, res, ctx, nginx_pid, plan, n, wl)
    return res


def start_system(
    name: str, ctx: Ctx, nginx_pid: int, sysres: dict[str, Any], wl: Workload = BASE
) -> Server:
    """Start one system (installing its peer first); StartError when it cannot run."""
    if name == "direct":
        return systems.direct(ctx, nginx_pid)
    if name in ("bare", "bare-lean"):
        return systems.bare(ctx, lean=name == "bare-lean")
    if name == "tokenomy-sqlite":
        return systems.tokenomy(ctx, "sqlite", orgs=wl.orgs, rotate=wl.rotate)
    if name in ("tokenomy-pg", "tokenomy-pg-2w"):
        if shutil.which("psql") is None:
            raise StartError("psql is not installed")
        workers = 2 if name.endswith("-2w") else 1
        return systems.tokenomy(ctx, "pg", workers=workers, orgs=wl.orgs, rotate=wl.rotate)
    inst = install.litellm() if name == "litellm" else install.portkey()
    if not inst.ok or inst.path is None:
        raise StartError(inst.reason)
    sysres["version"] = inst.version
    sysres["label"] = LABELS[name].format(v=" " + inst.version)
    if name == "litellm":
        return systems.litellm(ctx, inst.path)
    return systems.portkey(ctx, inst.path)


def body_of(wl: Workload) -> Any:
    """The request body a workload sends in a mode (None: the small request)."""
    if not wl.prompt_bytes:
        return lambda mode: None
    user = prompt(wl.prompt_bytes)
    return lambda mode: systems.request_body(mode, user)


def run_system(
    name: str, ctx: Ctx, nginx_pid: int, plan: Plan, wl: Workload = BASE
) -> dict[str, Any]:
    print(f"== {name}" + ("" if wl is BASE else f" ({wl.name}: {wl.label})"), flush=True)
    res: dict[str, Any] = {"label": LABELS[name].format(v=""), "available": False}
    server: Server | None = None
    try:
        server = start_system(name, ctx, nginx_pid, res, wl)
        mode_errors = systems.wait_ready(
            server, timeout=180 if name == "litellm" else 60, modes=wl.modes
        )
        for mode, why in mode_errors.items():
            print(f"  {mode} not available: {why}", file=sys.stderr, flush=True)
        res.update(measure(server, ctx.workdir, plan, mode_errors, wl.modes, body_of(wl)))
        res["available"] = True
    except (StartError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        res["reason"] = str(e).strip()
        print(f"  not available: {res['reason'][:2000]}", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
            res["notes"] = list(server.notes)
            if server.after_stop is not None:
                res["notes"].append(server.after_stop())
            if server.log is not None:
                tail = server.log_tail(40)
                if tail and not res["available"]:
                    res["log_tail"] = tail
    if res.get("reason"):
        # One line in the table; the full text stays in the JSON.
        first = res["reason"].splitlines()[0]
        res["short_reason"] = first[:300]
    return res


def headline_cpu(load: dict[str, Any]) -> float | None:
    """CPU per request with everything counted: the server's own, and its database's
    (PostgreSQL backends, Redis) when it has one. Results before that was measured give
    the server's alone."""
    cpu = load.get("cpu_all_us_per_req", load.get("cpu_us_per_req"))
    return float(cpu) if cpu else None


def cpu_only(
    name: str, ctx: Ctx, nginx_pid: int, plan: Plan, why: str, wl: Workload = BASE
) -> dict[str, float]:
    """One more start of ``name``, loaded as in a main run (wrk only): CPU per request by
    mode, everything counted (the modes it could not serve are left out)."""
    print(f"== {name} ({why})", flush=True)
    out: dict[str, float] = {}
    server: Server | None = None
    body = body_of(wl)
    try:
        server = start_system(name, ctx, nginx_pid, {}, wl)
        systems.wait_ready(server, timeout=60, modes=wl.modes)
        for mode in wl.modes:
            cpu = headline_cpu(measure_load(server, mode, ctx.workdir, plan, body(mode)))
            if cpu:
                out[mode] = cpu
    except (StartError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"  {name} ({why}) not available: {e}", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    return out


def paired_bare(
    ctx: Ctx, nginx_pid: int, plan: Plan, wl: Workload = BASE, name: str = "bare"
) -> dict[str, float]:
    """The bare relay's CPU per request, measured again just before a tokenomy run.

    This machine's speed drifts by tens of percent within minutes, so the CPU ratio is
    taken against the bare relay measured next to each run, not once at the start.
    """
    return cpu_only(name, ctx, nginx_pid, plan, "again, beside the next tokenomy run", wl)


def cpu_pairs(
    name: str,
    first: dict[str, Any],
    ctx: Ctx,
    nginx_pid: int,
    plan: Plan,
    repeat: int,
    wl: Workload = BASE,
) -> dict[str, list[list[float]]]:
    """[tokenomy, bare relay] CPU per request per mode, everything counted: the main
    run's pair, then ``repeat - 1`` more, each bare relay measured just before its
    tokenomy run. A single pair cannot settle a ±10% question on a machine that drifts by
    tens of percent."""
    pairs: dict[str, list[list[float]]] = {m: [] for m in wl.modes}
    for mode in wl.modes:
        tok = headline_cpu((first.get("modes", {}).get(mode) or {}).get("load", {}))
        bare = first.get("paired_bare", {}).get(mode)
        if tok and bare:
            pairs[mode].append([tok, bare])
    for _ in range(repeat - 1):
        bare_cpu = paired_bare(ctx, nginx_pid, plan, wl)
        tok_cpu = cpu_only(name, ctx, nginx_pid, plan, "again, CPU only", wl)
        for mode in wl.modes:
            if mode in bare_cpu and mode in tok_cpu:
                pairs[mode].append([tok_cpu[mode], bare_cpu[mode]])
    return pairs


def config_notes() -> list[str]:
    """What the bench config leaves out because this revision cannot configure it yet."""
    from tokenomy.config import Config

    fields = set(Config.model_fields)
    notes = [f"tokenomy config sections at this revision: {', '.join(sorted(fields))}."]
    if not fields & {"admission", "rate_limits", "ratelimit", "limits"}:
        notes.append(
            "Rate limits and fair queues are not configurable from the config file at this "
            "revision, so the tokenomy figures do not include admission control."
        )
    else:
        notes.append(
            "Rate limits on: every key and org has requests/minute and tokens/minute limits "
            "(and keys a concurrency cap) far above the load, so each request is checked "
            "and settled against them and none is refused (bench/tokenomy-bench.yaml)."
        )
    return notes


def write_markdown(results: dict[str, Any], full: bool) -> Path:
    """RESULTS.md for a full run of every system; other runs sit beside their JSON."""
    order = {name: i for i, name in enumerate(ALL)}
    results["systems"] = dict(sorted(results["systems"].items(), key=lambda kv: order[kv[0]]))
    notes = config_notes()
    for name, s in results["systems"].items():
        notes += [f"{name}: {n}" for n in s.get("notes", [])]
    loads = ", ".join(
        f"{name} {s['loadavg_before'][0]}"
        for name, s in results["systems"].items()
        if s.get("loadavg_before")
    )
    if loads:
        notes.append(
            "1-minute load average before each system (others may share the machine; "
            f"CPU/req is robust to that, req/s and latency less so): {loads}."
        )
    md = (
        BENCH / "RESULTS.md"
        if full
        else BENCH / "results" / results["json_name"].replace(".json", ".md")
    )
    md.write_text(report.render(results, notes))
    return md


def main() -> int:
    args = parse_args()
    if args.render:
        saved = orjson.loads(Path(args.render).read_bytes())
        full = (
            not saved["quick"]
            and set(saved["systems"]) == set(ALL)
            and set(saved.get("workloads", {})) == set(WORKLOADS) - {"base"}
        )
        print(f"wrote {write_markdown(saved, full)}")
        return 0
    plan = QUICK if args.quick else FULL
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(systems.stop_all)

    print("== installing what the bench needs", flush=True)
    err = install.apt_install(["nginx", "wrk"])
    if err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="tokenomy-bench-"))
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "plan": plan.__dict__,
        "repeat": repeat,
        "machine": machine(),
        "tokenomy_rev": tokenomy_rev(),
        "systems": {},
    }
    try:
        ctx, nginx_pid = start_nginx(workdir)
        if any(n.startswith("tokenomy-pg") for n in args.systems):
            start_redis(ctx)
        results["redis"] = "own" if ctx.redis_pid else "shared"
        with_bare = "bare" in args.systems
        if "base" in args.workloads:
            for name in args.systems:
                results["systems"][name] = run_one(
                    name, ctx, nginx_pid, plan, repeat, BASE, with_bare
                )
        results["workloads"] = {}
        for wname in args.workloads:
            if wname == "base":
                continue
            wl = WORKLOADS[wname]
            runs = results["workloads"][wname] = {
                "label": wl.label,
                "modes": list(wl.modes),
                "systems": {},
            }
            for name in args.systems:
                if name in SYSTEMS:
                    runs["systems"][name] = run_one(
                        name, ctx, nginx_pid, plan, repeat, wl, with_bare
                    )
        # Each backend that ran is profiled: the PostgreSQL + Redis one is where the
        # ratio is hardest to meet.
        backends = tuple(
            b
            for b in profiling.BACKENDS
            if results["systems"].get(f"tokenomy-{b}", {}).get("available")
        )
        if not args.no_profile and backends:
            spy = install.py_spy()
            if not spy.ok:
                print(f"  py-spy not available ({spy.reason}); using cProfile", flush=True)
            results["profile"] = profiling.run_profiles(
                ctx, spy.path if spy.ok else None, 6 if args.quick else 15, plan, backends
            )
    finally:
        systems.stop_all()
        systems.drop_seeds()
        if args.keep:
            print(f"temp dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    stamp = started.strftime("%Y%m%d-%H%M%S")
    kind = "quick" if args.quick else "full"
    subset = "" if args.systems == ALL else "-" + "-".join(args.systems[1:])
    if args.workloads != list(WORKLOADS):
        subset += "-" + "-".join(args.workloads)
    results["json_name"] = f"{stamp}-{kind}{subset}.json"
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / results["json_name"]).write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2)
    )
    full = not args.quick and args.systems == ALL and args.workloads == list(WORKLOADS)
    md = write_markdown(results, full=full)
    print(f"\nwrote {md.relative_to(ROOT)} and bench/results/{results['json_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
