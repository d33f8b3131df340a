"""The systems under test: how each is started, reached and stopped.

Every server runs as one worker in its own process group, so its whole tree can be
measured from /proc and stopped by that group's id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import procstat

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MAIN_BIN = ROOT / ".venv/bin"
MODES = ("json", "sse")
#: Every mode a workload may load (see workloads.py).
ALL_MODES = ("json", "sse", "long")
UPSTREAM_KEY = "sk-bench-upstream"
PG_DB = "tokenomy_bench"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
#: The shared Redis, when the bench cannot start its own (then Redis's CPU is not counted).
SHARED_REDIS_URL = "redis://127.0.0.1:6379/15"


#: The model each mode asks for: it picks the upstream port ("long": a 2,000-event stream).
MODELS = {"json": "bench-json", "sse": "bench-sse", "long": "bench-long"}


def request_body(mode: str, user: str = "Say hello in one short sentence.") -> bytes:
    """The chat request every system gets; the model name picks the upstream port."""
    body: dict[str, object] = {
        "model": MODELS[mode],
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": user},
        ],
        "max_tokens": 64,
    }
    if mode != "json":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ctx:
    """What every system needs: where to write, where the upstream listens."""

    workdir: Path
    json_port: int
    sse_port: int
    long_port: int = 0
    #: The bench's own redis-server (its CPU is attributed to the runs), else the shared one.
    redis_url: str = SHARED_REDIS_URL
    redis_pid: int | None = None
    tools: dict[str, object] = field(default_factory=dict)

    @property
    def json_base(self) -> str:
        return f"http://127.0.0.1:{self.json_port}"

    @property
    def sse_base(self) -> str:
        return f"http://127.0.0.1:{self.sse_port}"

    @property
    def long_base(self) -> str:
        return f"http://127.0.0.1:{self.long_port}"


@dataclass
class Server:
    """A running system: the root of its process tree and how to reach it per mode."""

    name: str
    proc: subprocess.Popen[bytes] | None
    pid: int
    urls: dict[str, str]
    headers: dict[str, dict[str, str]]
    log: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: Called after the server stops, to check what it recorded.
    after_stop: Callable[[], str] | None = None
    #: Header lines ("Authorization: Bearer ...") the load rotates through, one a line.
    rotate_file: Path | None = None
    #: Other processes whose CPU the run is charged with (PostgreSQL backends, Redis), as
    #: name -> a sample; ``delta(before, after)`` gives CPU seconds.
    attributed: dict[str, Attributed] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc)

    def log_tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(lines[-n:])


@dataclass(frozen=True)
class Attributed:
    """CPU of processes outside the server's tree that it makes work (its database)."""

    sample: Callable[[], object]
    delta: Callable[[object, object], float]


class StartError(Exception):
    """A system that did not come up; the message says why (and its log's tail)."""


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group we created for ``proc``, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


#: Every process group started by this run, stopped again on any exit.
STARTED: list[subprocess.Popen[bytes]] = []


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    out.close()
    STARTED.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(STARTED):
        stop_group(proc, grace=5)
    STARTED.clear()


def wait_ready(server: Server, timeout: float, modes: tuple[str, ...] = MODES) -> dict[str, str]:
    """Wait for the port to accept, then check each mode answers 200 with the fixed text.

    Returns the modes that failed, with why; StartError when none works."""
    port = int(server.urls["json"].split(":")[2].split("/")[0])
    deadline = time.monotonic() + timeout
    while True:
        if server.proc is not None and server.proc.poll() is not None:
            raise StartError(
                f"exited with code {server.proc.returncode} during start:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        if time.monotonic() > deadline:
            raise StartError(f"port {port} not open after {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.25)
    errors: dict[str, str] = {}
    for mode in modes:
        status, body = post(server.urls[mode], server.headers[mode], request_body(mode))
        want = b"[DONE]" if mode == "sse" else b'"usage"'
        if status != 200 or b"benchmark" not in body or want not in body:
            errors[mode] = f"{mode} smoke request answered {status}: {body[:300]!r}"
    if len(errors) == len(modes):
        raise StartError("; ".join(errors.values()) + "\n" + server.log_tail())
    for mode, err in errors.items():
        errors[mode] = err + " " + _first_error(server.log_tail(40))
    return errors


def _first_error(log: str) -> str:
    """The first line of the log that names an error, for a one-line reason."""
    for line in log.splitlines():
        if "error" in line.lower() or "exception" in line.lower():
            return "(log: " + line.strip()[:200] + ")"
    return ""


def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


# ---- the systems ----------------------------------------------------------------------


def direct(ctx: Ctx, nginx_pid: int) -> Server:
    """The fixed-answer nginx itself: the floor every system's latency is compared with."""
    return Server(
        "direct",
        None,
        nginx_pid,
        urls={
            "json": ctx.json_base + "/v1/chat/completions",
            "sse": ctx.sse_base + "/v1/chat/completions",
            "long": ctx.long_base + "/v1/chat/completions",
        },
        headers={m: {"Authorization": "Bearer " + UPSTREAM_KEY} for m in ALL_MODES},
    )


def bare(ctx: Ctx, lean: bool = False) -> Server:
    """The bare relay on aiohttp, or (``lean``) on tokenomy's own HTTP server and client."""
    name = "bare-lean" if lean else "bare"
    port = free_port()
    log = ctx.workdir / f"{name}.log"
    cmd = [
        str(MAIN_BIN / "python"),
        str(BENCH / ("lean_relay.py" if lean else "bare_relay.py")),
        "--port",
        str(port),
        "--upstream",
        ctx.json_base,
        "--stream-upstream",
        ctx.sse_base,
        "--long-upstream",
        ctx.long_base,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = spawn(cmd, log, env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": "Bearer " + UPSTREAM_KEY}
    return Server(
        name, proc, proc.pid, {m: url for m in ALL_MODES}, {m: auth for m in ALL_MODES}, log
    )


def _tokenomy_env(ctx: Ctx, db_url: str, redis_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TOKENOMY_REDIS_URL", None)
    env.update(
        TOKENOMY_BENCH_JSON_URL=ctx.json_base + "/v1",
        TOKENOMY_BENCH_SSE_URL=ctx.sse_base + "/v1",
        TOKENOMY_BENCH_LONG_URL=ctx.long_base + "/v1",
        TOKENOMY_BENCH_UPSTREAM_KEY=UPSTREAM_KEY,
        TOKENOMY_DATABASE_URL=db_url,
        TOKENOMY_ADMIN_KEY="tk-admin-bench",
    )
    if redis_url:
        env["TOKENOMY_REDIS_URL"] = redis_url
    return env


def _tokenomy_cli(env: dict[str, str], log: Path, *args: str) -> tuple[int, str, str]:
    cmd = [str(MAIN_BIN / "tokenomy"), *args, "--config", str(BENCH / "tokenomy-bench.yaml")]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    with log.open("a") as f:
        f.write(f"$ tokenomy {' '.join(args)}\n{p.stdout}{p.stderr}\n")
    return p.returncode, p.stdout, p.stderr


def _account(env: dict[str, str], log: Path) -> tuple[str, list[str]]:
    """A real API key; bound to a topped-up org with a daily key budget when this revision
    has the ledger commands, so holds and settlement run too. (secret, notes)"""
    notes: list[str] = []
    rc, out, err = _tokenomy_cli(env, log, "orgs", "create", "bench-org", "--currency", "USD")
    org = out.split()[0] if rc == 0 and out.strip() else None
    if org is not None:
        rc, _, err = _tokenomy_cli(env, log, "topup", org, "1000000.00")
        if rc != 0:
            notes.append(f"topup failed ({err.strip()[-200:]}); key not bound to an org")
            org = None
    else:
        notes.append(f"no org (orgs create: {err.strip()[-200:] or rc}); a house key is used")
    rc, out, err = _tokenomy_cli(
        env, log, "keys", "create", "--name", "bench", *(["--org", org] if org else [])
    )
    lines = out.strip().splitlines()
    if rc != 0 or not lines or not lines[0].startswith("tk-"):
        raise StartError(f"tokenomy keys create failed ({rc}): {err.strip()[-800:]}")
    secret = lines[0].strip()
    if org is None:
        return secret, notes
    key_id = lines[1].split()[1] if len(lines) > 1 and lines[1].startswith("id:") else None
    budget = "no key budget"
    if key_id:
        rc, _, err = _tokenomy_cli(
            env,
            log,
            "budgets",
            "set",
            "--scope",
            "key",
            "--id",
            key_id,
            "--period",
            "day",
            "--amount",
            "1000000.00",
        )
        budget = "a daily key budget" if rc == 0 else f"no key budget ({err.strip()[-200:]})"
    notes.append(f"key bound to a prepaid org topped up with 1,000,000 USD, {budget}")
    return secret, notes


def _psql(sql: str, db: str = "postgres") -> str | None:
    """None when PostgreSQL ran ``sql``, else why not."""
    p = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if p.returncode != 0:
        return f"PostgreSQL on 127.0.0.1:5432 refused {sql!r}: " + p.stderr.strip()[-200:]
    return None


def _flush_redis(url: str) -> str | None:
    """Empty the Redis database ``url`` names (redis://host:port/db); None, or why not."""
    hostport, _, db = url.removeprefix("redis://").partition("/")
    host, _, port = hostport.partition(":")
    with socket.create_connection((host, int(port or 6379)), 2) as s:
        s.sendall(f"SELECT {db or 0}\r\nFLUSHDB\r\n".encode())
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = s.recv(64)
            if not chunk:
                break
            reply += chunk
    if reply != b"+OK\r\n+OK\r\n":
        return f"Redis at {hostport} did not empty db {db}: {reply[:80]!r}"
    return None


def postgres_ready(ctx: Ctx, template: str | None = None) -> str | None:
    """None when PostgreSQL and Redis answer, after making the bench database (a copy of
    ``template`` when given) and its Redis database empty (each run starts from nothing,
    as rows left by earlier runs would make the figures drift), else why not."""
    if shutil.which("psql") is None:
        return "psql is not installed"
    made = f"CREATE DATABASE {PG_DB}" + (f" TEMPLATE {template}" if template else "")
    try:
        for sql in (f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)", made):
            why = _psql(sql)
            if why:
                return why
        return _flush_redis(ctx.redis_url)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"PostgreSQL or Redis not reachable: {e}"


#: PostgreSQL template databases made by :func:`seed`, dropped at exit.
SEED_DBS: list[str] = []


def seed(ctx: Ctx, backend: str, orgs: int, topup: int) -> tuple[str, Path]:
    """A database with ``orgs`` tenants (an org with a key each, the first ``topup`` of
    them topped up), made once per run and size: (the SQLite file or PostgreSQL template
    to copy, the file of their secrets). Seeded by bench/seed_orgs.py."""
    keys = ctx.workdir / f"keys-{orgs}-{topup}.txt"
    if backend == "sqlite":
        target = ctx.workdir / f"seed-{orgs}-{topup}.db"
        url = f"sqlite:///{target}"
    else:
        target = ctx.workdir / f"seed-{orgs}-{topup}-pg"  # a mark: the template exists
        name = f"{PG_DB}_seed_{orgs}_{topup}"
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    done = Path(str(target) + ".done")
    if not done.exists():
        if backend != "sqlite":
            for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
                why = _psql(sql)
                if why:
                    raise StartError(why)
            SEED_DBS.append(name)
        print(f"  seeding {orgs:,} orgs and keys ({backend})", flush=True)
        t0 = time.monotonic()
        env = dict(os.environ, TOKENOMY_DATABASE_URL=url, PYTHONPATH=str(ROOT / "src"))
        cmd = [str(MAIN_BIN / "python"), str(BENCH / "seed_orgs.py"), "--orgs", str(orgs)]
        cmd += ["--topup", str(topup)]
        p = subprocess.run(
            [*cmd, "--keys-out", str(keys)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if p.returncode != 0:
            raise StartError(f"seeding failed: {p.stderr.strip()[-800:]}")
        print(f"    {time.monotonic() - t0:.0f} s", flush=True)
        done.touch()
    return (str(target) if backend == "sqlite" else name), keys


def drop_seeds() -> None:
    for name in SEED_DBS:
        with contextlib.suppress(Exception):
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    SEED_DBS.clear()


def rotate_file(ctx: Ctx, keys: Path, n: int) -> Path:
    """The first ``n`` seeded keys as Authorization header lines, for the load to rotate."""
    out = ctx.workdir / f"rotate-{n}.txt"
    secrets = keys.read_text().split()[:n]
    out.write_text("".join(f"Authorization: Bearer {k}\n" for k in secrets))
    return out


def _attributed(ctx: Ctx) -> dict[str, Attributed]:
    """PostgreSQL's backends on the bench database, and the bench's own Redis."""
    out = {
        "postgres": Attributed(
            lambda: procstat.pg_backends(PG_DB),
            lambda a, b: procstat.pg_backends_delta_s(a, b),  # type: ignore[arg-type]
        )
    }
    if ctx.redis_pid is not None:
        pid = ctx.redis_pid
        out["redis"] = Attributed(
            lambda: procstat.cpu_seconds(pid),
            lambda a, b: float(b) - float(a),  # type: ignore[arg-type]
        )
    return out


def _count_usage(db_url: str) -> int | None:
    """Rows in usage_events, so the report can show the metering path really ran."""
    query = "SELECT count(*) FROM usage_events"
    try:
        if db_url.startswith("sqlite:///"):
            import sqlite3

            with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as c:
                return int(c.execute(query).fetchone()[0])
        p = subprocess.run(
            ["psql", db_url, "-tAc", query], capture_output=True, text=True, timeout=30
        )
        return int(p.stdout.strip()) if p.returncode == 0 else None
    except Exception:
        return None


def tokenomy(
    ctx: Ctx,
    backend: str,
    *,
    port: int | None = None,
    wrap: list[str] | None = None,
    workers: int = 1,
    orgs: int = 1,
    rotate: int = 1,
) -> Server:
    """tokenomy with its whole pipeline: SQLite alone, or PostgreSQL plus Redis (the only
    way to run several workers: balances and limits must stay global). With ``orgs`` > 1
    the database first holds that many seeded tenants, and the load rotates through
    ``rotate`` of their keys."""
    name = f"tokenomy-{backend}" + (f"-{workers}w" if workers > 1 else "")
    log = ctx.workdir / f"{name}.log"
    keys, template = None, ""
    if orgs > 1:
        # The tenants in rotation are topped up; the rest are only present.
        template, keys = seed(ctx, backend, orgs, rotate)
    if backend == "sqlite":
        db_file = ctx.workdir / "tokenomy-bench.db"
        db_url, redis_url = f"sqlite:///{db_file}", None
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_file) + suffix).unlink(missing_ok=True)
        if keys is not None:
            shutil.copyfile(template, db_file)
    else:
        why = postgres_ready(ctx, template if keys is not None else None)
        if why:
            raise StartError(why)
        db_url, redis_url = PG_URL, ctx.redis_url
    env = _tokenomy_env(ctx, db_url, redis_url)
    key, notes = _account(env, log)
    before = _count_usage(db_url) or 0
    port = port or free_port()
    cmd = [
        *(wrap or []),
        str(MAIN_BIN / "tokenomy"),
        "serve",
        "--config",
        str(BENCH / "tokenomy-bench.yaml"),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    proc = spawn(cmd, log, env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": "Bearer " + key}

    def recorded() -> str:
        after = _count_usage(db_url)
        if after is None:
            return "usage rows could not be counted"
        return f"{after - before} usage rows recorded"

    return Server(
        name,
        proc,
        proc.pid,
        {m: url for m in ALL_MODES},
        {m: auth for m in ALL_MODES},
        log,
        notes,
        after_stop=recorded,
        rotate_file=rotate_file(ctx, keys, rotate) if keys is not None and rotate > 1 else None,
        attributed=_attributed(ctx) if backend != "sqlite" else {},
    )


LITELLM_CONFIG = """\
model_list:
  - model_name: bench-json
    litellm_params:
      model: openai/bench-json
      api_base: {json_base}/v1
      api_key: {key}
  - model_name: bench-sse
    litellm_params:
      model: openai/bench-sse
      api_base: {sse_base}/v1
      api_key: {key}
litellm_settings:
  telemetry: false
  set_verbose: false
  drop_params: true
general_settings:
  master_key: sk-bench-litellm
"""


def litellm(ctx: Ctx, exe: Path) -> Server:
    port = free_port()
    log = ctx.workdir / "litellm.log"
    cfg = ctx.workdir / "litellm.yaml"
    cfg.write_text(
        LITELLM_CONFIG.format(json_base=ctx.json_base, sse_base=ctx.sse_base, key=UPSTREAM_KEY)
    )
    env = dict(os.environ)
    for var in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST"):
        env.pop(var, None)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        NO_DOCS="True",
    )
    cmd = [
        str(exe),
        "--config",
        str(cfg),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    proc = spawn(cmd, log, env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": "Bearer sk-bench-litellm"}
    return Server("litellm", proc, proc.pid, {m: url for m in MODES}, {m: auth for m in MODES}, log)


def portkey(ctx: Ctx, entry: Path) -> Server:
    port = free_port()
    log = ctx.workdir / "portkey.log"
    node = shutil.which("node") or "node"
    proc = spawn([node, str(entry), f"--port={port}", "--headless"], log)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {
        mode: {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": (ctx.json_base if mode == "json" else ctx.sse_base) + "/v1",
            "Authorization": "Bearer " + UPSTREAM_KEY,
        }
        for mode in MODES
    }
    return Server("portkey", proc, proc.pid, {m: url for m in MODES}, headers, log)
