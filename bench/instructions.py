"""Instructions per request of tokenomy's in-process request path: a CPU figure that does
not drift with the machine.

    python bench/instructions.py [--requests 400,1200] [--src DIR] [-- PIPELINE_BENCH_ARGS]

Runs ``bench/pipeline_bench.py`` (one round: the json then the sse mode) under
``valgrind --tool=callgrind`` twice, with two request counts, and divides the difference
of the instructions executed by the difference of the requests: start-up, imports and
warm-up cancel out. What grows with the requests is counted: the request path, the
durable writer's flushes, and pipeline_bench's check at the end (every usage row
distinct, the ledger balanced; about 0.5% of the figure). Callgrind counts instructions,
not time, so the figure repeats to about 0.5% on a busy or slow machine (the writer's
thread and timers still interleave differently), where CPU seconds moved by ±10%
between back-to-back runs. It judges a code change of a few percent that
timing cannot; it does not see what an instruction costs (cache misses, system calls'
kernel time), so the timed benches stay the reference for the targets.

``--src`` measures another tree's ``src`` (a checkout of an earlier commit, say) with
this one's bench. Arguments after ``--`` go to pipeline_bench.py (``--tenants 1000``,
``--prompt-bytes 400000``, ``--long-stream``). The two runs go side by side: about a
minute in all on two cores.

On 2026-12-07, with cb15795's src: 724,236, 726,232, 727,076 and 727,670 instructions a
request in four runs, 0.5% apart. With ``-- --tenants 1000``, 736,031 (+1.2%), while the
timed benches put 1,000 tenants 10-20% above one: what many tenants add is mostly the
cost of each instruction (cache misses), not more code run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
#: pipeline_bench's options this script sets itself: the same in both runs, or the
#: difference would not cancel (``--profile`` adds a round).
_FIXED = ("--requests", "--rounds", "--warmup", "--profile")


def instructions(src: Path, requests: int, extra: list[str], workdir: Path) -> int:
    """Instructions callgrind counted for one pipeline_bench run of ``requests`` a mode."""
    log = workdir / f"valgrind-{requests}.log"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={workdir / f'callgrind-{requests}.out'}",
        f"--log-file={log}",
        sys.executable,
        str(BENCH / "pipeline_bench.py"),
        *extra,
        "--rounds",
        "1",
        "--warmup",
        "50",
        "--requests",
        str(requests),
    ]
    # A fixed hash seed: otherwise dict and set layouts, and so the instructions, differ
    # from run to run.
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"pipeline_bench under callgrind ran past 30 min ({requests})") from None
    found = _COLLECTED.search(log.read_text()) if log.exists() else None
    if p.returncode != 0 or found is None:
        said = (p.stderr + p.stdout).strip().splitlines()[-8:]
        raise SystemExit(
            f"pipeline_bench under callgrind failed ({p.returncode}):\n" + "\n".join(said)
        )
    return int(found.group(1))


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", default="400,1200", help="the two request counts a mode")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the tree measured")
    args = ap.parse_args(argv)
    if fixed := [a for a in extra if a.split("=")[0] in _FIXED]:
        ap.error(f"{', '.join(fixed)}: set by this script for both runs")
    try:
        low, high = sorted(int(n) for n in args.requests.split(","))
    except ValueError:
        ap.error("--requests takes two counts, as in 400,1200")
    if low == high:
        ap.error("--requests needs two different counts")
    if shutil.which("valgrind") is None:
        sys.path.insert(0, str(BENCH))
        import install

        err = install.apt_install(["valgrind"])
        if err:
            raise SystemExit(f"valgrind is needed and could not be installed: {err}")
    with (
        tempfile.TemporaryDirectory(prefix="tokenomy-instructions-") as tmp,
        ThreadPoolExecutor(2) as pool,
    ):
        runs = [
            pool.submit(instructions, args.src.resolve(), n, extra, Path(tmp)) for n in (low, high)
        ]
        few, many = (r.result() for r in runs)
    # Each request count is sent once as json and once as sse.
    per_request = (many - few) / ((high - low) * 2)
    print(
        f"{per_request:,.0f} instructions a request (the mean of json and sse; {args.src}, "
        f"pipeline_bench {' '.join(extra) or 'defaults'}; {high} - {low} requests a mode)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
