"""Real ``tokenomy serve`` and ``tokenomy sim`` processes on free ports, for tests that
kill, restart or run several gateways: what a thread in the test process cannot show.

Every process started through a :class:`Procs` is stopped when it closes, whatever the
test did; its output goes to a log file whose tail is shown when it fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests.conftest import migrated_engine
from tests.needs import require_service
from tests.servers import free_port
from tokenomy.billing.money import Currency
from tokenomy.ledger.store import Kind, LedgerStore
from tokenomy.store.keys import KeyStore

#: Variables that would override the config file a test writes for its gateway.
_OVERRIDES = ("TOKENOMY_DATABASE_URL", "TOKENOMY_REDIS_URL", "TOKENOMY_CONFIG", "TOKENOMY_SIM_URL")

START_TIMEOUT_S = 30.0

PG_URL = os.environ.get("TOKENOMY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOKENOMY_TEST_REDIS", "redis://127.0.0.1:6379/14")


def require(name: str, url: str) -> str:
    """``url`` if its server accepts connections; else fail under CI, skip elsewhere."""
    u = make_url(url)
    host, port = u.host or "127.0.0.1", u.port or {"redis": 6379}.get(u.drivername, 5432)
    require_service(name, host, port)
    return url


@contextmanager
def backend_database(backend: str, directory: Path) -> Iterator[tuple[Engine, str, str]]:
    """A migrated database for ``backend``: "sqlite" (a file in ``directory``, no Redis),
    else a throwaway PostgreSQL database and the test Redis. Yields (engine, database
    URL, Redis URL or "")."""
    redis_url = "" if backend == "sqlite" else require("Redis", REDIS_URL)
    with migrated_engine("sqlite" if backend == "sqlite" else "postgres", directory) as engine:
        yield engine, engine.url.render_as_string(hide_password=False), redis_url


def funded_org(engine: Engine, name: str, topup: int) -> tuple[str, str]:
    """A new org with ``topup`` nanos (none when 0) and a key of it: (org id, secret)."""
    ledger = LedgerStore(engine)
    org = ledger.create_org(name, Currency.USD)
    if topup:
        ledger.post(Kind.TOPUP, org.id, topup)
    secret, _ = KeyStore(engine).create(name, org_id=org.id)
    return org.id, secret


class ProcError(RuntimeError):
    """A process that would not start or stop as asked."""


def gateway_yaml(
    sim_url: str,
    db_url: str,
    *,
    flush_interval_ms: int = 100,
    redis_url: str = "",
    redis_prefix: str = "tk:",
    extra: str = "",
    ledger: str = "",
) -> str:
    """A gateway config on the simulator at ``sim_url``; ``extra`` is appended verbatim,
    ``ledger`` (lines of ``key: value``) goes into the ledger section."""
    ledger_lines = "".join(f"\n  {line.strip()}" for line in ledger.splitlines() if line.strip())
    return f"""
database: {{url: "{db_url}"}}
writer: {{flush_interval_ms: {flush_interval_ms}}}
ledger:
  redis_url: "{redis_url}"
  redis_prefix: "{redis_prefix}"{ledger_lines}
server:
  first_byte_timeout_s: 10
  read_timeout_s: 10
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none, name: Sim}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small, context_length: 32768, max_output: 4096}}]
{extra}
"""


@dataclass
class Proc:
    """One child process serving HTTP on ``port``; ``ready_path`` answers 200 when up."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    ready_path: str
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ProcError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise ProcError(f"{self.name} exited while starting:\n{self.log_tail()}")
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise ProcError(f"{self.name} was not ready within {timeout} s:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def terminate(self, timeout: float = 15.0, *, signalled: bool = False) -> int:
        """SIGTERM (the graceful path: the gateway drains its writer), then wait.

        ``signalled``: SIGTERM was already sent; only wait (a second one would not be
        graceful).
        """
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            if not signalled:
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ProcError(
                    f"{self.name} did not stop within {timeout} s of SIGTERM:\n{self.log_tail()}"
                ) from None
        return int(self.popen.returncode)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when the machine or the OOM killer stops it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Procs:
    """Starts simulators and gateways in ``workdir``; :meth:`close` stops them all."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)
    _seq: int = 0

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        ready_path: str,
        port: int | None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        # A free port can be taken between the probe and the child's bind: try a few.
        attempts = 1 if port is not None else 3
        last: ProcError | None = None
        for _ in range(attempts):
            self._seq += 1
            p = port if port is not None else free_port()
            argv = [sys.executable, "-m", "tokenomy", *args, "--port", str(p)]
            log = self.workdir / f"{self._seq:02d}-{name}.log"
            proc = Proc(name, argv, p, log, ready_path, self._env(env))
            self.started.append(proc)
            try:
                return proc.start()
            except ProcError as e:
                last = e
                if "address already in use" not in str(e).lower():
                    raise
        assert last is not None
        raise last

    def sim(
        self, *, ttft_ms: float = 0.0, output_tokens: int = 16, video_ms_per_second: float = 200.0
    ) -> Proc:
        """``tokenomy sim``: answers at once (or after ``ttft_ms``), ``output_tokens`` long;
        a video renders for ``video_ms_per_second`` per second of output."""
        args = ["sim", "--ttft-ms", str(ttft_ms), "--output-tokens", str(output_tokens)]
        args += ["--video-ms-per-second", str(video_ms_per_second)]
        return self._spawn("sim", args, "/v1/models", None)

    def write_config(self, text: str, name: str = "gateway") -> Path:
        self._seq += 1
        path = self.workdir / f"{self._seq:02d}-{name}.yaml"
        path.write_text(text)
        return path

    def gateway(
        self,
        config: Path,
        *,
        port: int | None = None,
        name: str = "gateway",
        env: dict[str, str] | None = None,
        workers: int = 1,
        log_level: str = "warning",
    ) -> Proc:
        """``tokenomy serve --config FILE``, ready once /healthz answers; ``env`` is
        added to the environment."""
        args = ["serve", "--config", str(config), "--log-level", log_level]
        if workers != 1:
            args += ["--workers", str(workers)]
        return self._spawn(name, args, "/healthz", port, env)

    def close(self) -> None:
        """Stop everything still running: SIGTERM first, SIGKILL if it lingers."""
        for proc in reversed(self.started):
            if proc.alive:
                try:
                    proc.terminate(timeout=10)
                except ProcError:
                    proc.kill()


@contextmanager
def running(workdir: Path) -> Iterator[Procs]:
    procs = Procs(workdir)
    try:
        yield procs
    finally:
        procs.close()
