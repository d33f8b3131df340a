"""Profiling tokenomy under load: py-spy when it works here, cProfile otherwise.

The result is a plain-text top-N by cumulative (inclusive) time, and by own time, so the
next optimisation starts from evidence rather than from a guess.
"""

from __future__ import annotations

import io
import os
import pstats
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from measure import Plan, run_wrk
from systems import (
    BENCH,
    MAIN_BIN,
    Ctx,
    StartError,
    request_body,
    spawn,
    stop_group,
    tokenomy,
    wait_ready,
)

TOP = 45
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _short(path: str) -> str:
    """Paths relative to site-packages or the repository, so the summary reads the same
    on every machine."""
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            return path[i + len(marker) :] if marker != "/lib/python3" else "stdlib" + path[i:]
    return path


#: Request-path stages, as (stage, function-name prefix, file fragment). A sample counts
#: for the innermost stage on its stack; samples in no stage are the event loop and the
#: interpreter (including socket reads and writes made from C).
STAGES: tuple[tuple[str, str, str], ...] = (
    ("HTTP server (parse requests, write answers)", "", "api/lean_server.py"),
    ("auth (key lookup)", "authenticate", "api/edge.py"),
    ("read and parse the body", "parse_json", "api/edge.py"),
    ("validate", "", "gateway/validation.py"),
    ("admit (rate limits)", "RateLimitStage.", "admission/ratelimit.py"),
    ("route (rank deployments)", "Router.", "routing/router.py"),
    ("reserve (ledger hold)", "LedgerStage.before", "ledger/stage.py"),
    ("vendor call (HTTP client)", "HttpProvider.send", "providers/http.py"),
    ("vendor call (HTTP client)", "HttpUpstreamResponse.", "providers/http.py"),
    ("vendor call (HTTP client)", "", "providers/transport.py"),
    ("Redis script calls", "", "store/redis_scripts.py"),
    ("relay the stream", "StreamRelay.", "gateway/relay.py"),
    ("meter and price", "Pipeline._client_obj", "gateway/pipeline.py"),
    ("meter and price", "LedgerStage.quote", "ledger/stage.py"),
    ("settle (ledger, limits)", "LedgerStage.after", "ledger/stage.py"),
    ("record (queue the event, metrics)", "build_services.<locals>.record", "services.py"),
    # A thread of its own (store/writer.py), on SQLite and on PostgreSQL.
    ("durable writer", "Sink.", "store/writer.py"),
    ("durable writer", "_insert_chunked", "store/writer.py"),
    ("durable writer", "_copy_in", "store/writer.py"),
    ("durable writer", "BatchWriter.flush", "store/writer.py"),
    ("durable writer", "BatchWriter._run", "store/writer.py"),
    ("roll-ups (thread)", "Rollups.", "analytics/rollup.py"),
)
OTHER_OURS = "pipeline glue (other tokenomy code)"
OTHER = "event loop, interpreter (aiohttp for other routes)"


def _stage_of(funcs: list[str]) -> str:
    for f in reversed(funcs):
        for stage, prefix, path in STAGES:
            if f.startswith(prefix) and f"({path}" in f.replace("tokenomy/", ""):
                return stage
    return OTHER_OURS if funcs and "(tokenomy/" in funcs[-1] else OTHER


def summarise_collapsed(raw: str, title: str) -> str:
    """Top functions by inclusive and by own samples, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        funcs = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            funcs.append(f"{m['func']} ({_short(m['file'])})" if m else frame)
        for f in set(funcs):
            inclusive[f] += n
        own[funcs[-1]] += n
        stages[_stage_of(funcs)] += n
    out = [title, f"{total} samples (py-spy, non-idle)", ""]
    out.append(
        "By stage (each sample counts for the innermost stage on its stack; a thread "
        "waiting for the GIL may be sampled as busy, so a writer thread's share reads high):"
    )
    out.append(f"{'samples':>8} {'%':>6}  stage")
    for stage, n in stages.most_common():
        out.append(f"{n:>8} {100 * n / max(total, 1):>6.1f}  {stage}")
    out.append("")
    for name, counter in (("cumulative (inclusive)", inclusive), ("own (self)", own)):
        out.append(f"Top {TOP} by {name} samples:")
        out.append(f"{'samples':>8} {'%':>6}  function")
        for f, n in counter.most_common(TOP):
            out.append(f"{n:>8} {100 * n / max(total, 1):>6.1f}  {f}")
        out.append("")
    return "\n".join(out)


def summarise_pstats(path: Path, title: str) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats("cumulative").print_stats(TOP)
    stats.sort_stats("tottime").print_stats(TOP)
    return f"{title}\n(cProfile, main thread only)\n\n{buf.getvalue()}"


#: What each backend's profiles are called: their key in the results and file suffix.
BACKENDS = {"sqlite": ("", ""), "pg": (" (PostgreSQL + Redis)", "-pg")}


def profile_tokenomy(
    ctx: Ctx, mode: str, py_spy: Path | None, seconds: float, plan: Plan, backend: str = "sqlite"
) -> tuple[str, str]:
    """Profile tokenomy over ``seconds`` of load after a warm-up; (tool, summary).

    py-spy attaches to the warmed-up server for exactly the loaded window, so start-up
    and imports stay out of the figures; cProfile has to run the server in-process."""
    label, suffix = BACKENDS[backend]
    out = ctx.workdir / f"profile-{mode}{suffix}"
    tool = "py-spy" if py_spy is not None else "cProfile"
    wrap = None
    if py_spy is None:
        prof = str(out.with_suffix(".prof"))
        wrap = [str(MAIN_BIN / "python"), str(BENCH / "profile_serve.py"), prof]
    server = tokenomy(ctx, backend, wrap=wrap)
    try:
        if mode in wait_ready(server, timeout=60):
            raise StartError(f"tokenomy does not answer {mode} requests")
        body = ctx.workdir / f"profile-body-{mode}.json"
        body.write_bytes(request_body(mode))
        run_wrk(server.urls[mode], server.headers[mode], body, 2, plan)
        spy = None
        if py_spy is not None:
            cmd = [
                str(py_spy),
                "record",
                "--pid",
                str(server.pid),
                "-d",
                str(round(seconds)),
                "-r",
                "250",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(out.with_suffix(".txt")),
            ]
            spy = spawn(cmd, ctx.workdir / f"py-spy-{mode}.log")
        load = run_wrk(server.urls[mode], server.headers[mode], body, seconds, plan)
        if spy is not None:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_group(spy)
        else:
            # tokenomy serve returns on SIGTERM, and the wrapper then writes the stats.
            os.kill(server.pid, signal.SIGTERM)
            assert server.proc is not None
            deadline = time.monotonic() + 60
            while server.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        server.stop()
    title = (
        f"tokenomy{label} profile, {mode} mode: {load['requests']} requests in {load['seconds']} s "
        f"under wrk -c{plan.connections} (throughput under a profiler is not comparable)"
    )
    if py_spy is not None:
        txt = out.with_suffix(".txt")
        if not txt.exists() or txt.stat().st_size == 0:
            log = (ctx.workdir / f"py-spy-{mode}.log").read_text(errors="replace")
            raise StartError(f"py-spy wrote nothing: {log.strip()[-400:]}")
        return tool, summarise_collapsed(txt.read_text(), title)
    prof_path = out.with_suffix(".prof")
    if not prof_path.exists():
        raise StartError(f"cProfile wrote nothing:\n{server.log_tail()}")
    return tool, summarise_pstats(prof_path, title)


def run_profiles(
    ctx: Ctx,
    py_spy: Path | None,
    seconds: float,
    plan: Plan,
    backends: tuple[str, ...] = ("sqlite",),
) -> dict[str, dict[str, str]]:
    """Profile both modes on each backend; write bench/profile-<mode>[-pg].txt; return
    what was done, keyed by mode (and backend, for all but SQLite)."""
    done: dict[str, dict[str, str]] = {}
    for backend in backends:
        label, suffix = BACKENDS[backend]
        for mode in ("json", "sse"):
            key = mode + label
            print(f"profiling tokenomy{label}/{mode}", flush=True)
            tools = [py_spy, None] if py_spy is not None else [None]
            for tool_path in tools:
                try:
                    tool, text = profile_tokenomy(ctx, mode, tool_path, seconds, plan, backend)
                except (StartError, RuntimeError, OSError) as e:
                    print(f"  profile failed: {e}", file=sys.stderr, flush=True)
                    done[key] = {"tool": "py-spy" if tool_path else "cProfile", "error": str(e)}
                    continue
                path = BENCH / f"profile-{mode}{suffix}.txt"
                path.write_text(text + "\n")
                done[key] = {"tool": tool, "file": path.name}
                break
    return done
