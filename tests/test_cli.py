"""The command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from tests.needs import require_redis
from tests.servers import ThreadServer, free_port
from tokenomy.store.db import open_engine
from tokenomy.store.schema import usage_events


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenomy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp: Path, sim_url: str, extra: str = "") -> Path:
    p = tmp / "tokenomy.yaml"
    p.write_text(
        f"""database: {{url: "sqlite:///{tmp / "cli.db"}"}}
vendors:
  sim: {{dialect: openai, base_url: "{sim_url}/v1", auth: none}}
models:
  - name: sim-small
    deployments: [{{vendor: sim, model: sim-small}}]
{extra}"""
    )
    return p


def test_config_check_ok_and_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    r = run("config", "check", str(cfg))
    assert r.returncode == 0 and "OK" in r.stdout and "sim-small: sim/sim-small" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 99999\n")
    r = run("config", "check", str(bad))
    assert r.returncode == 1 and f"{bad}:2: server.port" in r.stderr


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, "http://127.0.0.1:9"))
    r = run("keys", "create", "--config", cfg, "--name", "team-a", "--models", "sim-small")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.splitlines()[0]
    key_id = r.stdout.split("id: ")[1].split()[0]
    assert secret.startswith("tk-")
    listed = run("keys", "list", "--config", cfg).stdout
    assert key_id in listed and "team-a" in listed and secret not in listed
    assert run("keys", "create", "--config", cfg, "--models", "nope").returncode == 2
    assert run("keys", "revoke", "--config", cfg, key_id).returncode == 0
    assert key_id not in run("keys", "list", "--config", cfg).stdout
    assert run("keys", "revoke", "--config", cfg, key_id).returncode == 1


def test_serve_uses_cli_keys_and_drains_on_sigterm(tmp_path: Path, sim: ThreadServer) -> None:
    cfg = write_config(tmp_path, sim.url)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenomy", "serve", "--config", str(cfg), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # A key created by the CLI while the gateway runs is picked up without a restart.
        secret = run("keys", "create", "--config", str(cfg)).stdout.splitlines()[0]
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {secret}"}
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 200:
            status = httpx.post(base + "/chat/completions", json=body, headers=headers).status_code
            time.sleep(0.2)
        assert status == 200
        for _ in range(20):
            assert (
                httpx.post(base + "/chat/completions", json=body, headers=headers).status_code
                == 200
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_engine(f"sqlite:///{tmp_path / 'cli.db'}").connect() as c:
        n = c.execute(select(func.count()).where(usage_events.c.status == "ok")).scalar_one()
    assert n == 21


def test_several_workers_need_redis_and_share_one_port(tmp_path: Path, sim: ThreadServer) -> None:
    cfg = str(write_config(tmp_path, sim.url))
    env = {k: v for k, v in os.environ.items() if k != "TOKENOMY_REDIS_URL"}
    r = subprocess.run(
        [sys.executable, "-m", "tokenomy", "serve", "--config", cfg, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode != 0 and "TOKENOMY_REDIS_URL" in r.stderr
    redis_url = require_redis()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenomy",
            "serve",
            "--config",
            cfg,
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env={**env, "TOKENOMY_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        secret = run("keys", "create", "--config", cfg).stdout.splitlines()[0]
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
        ok = 0
        deadline = time.monotonic() + 15
        while ok < 10 and time.monotonic() < deadline:
            # New connections each time, so both workers take some (the kernel decides).
            r2 = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {secret}"},
            )
            ok += r2.status_code == 200
            time.sleep(0.05)
        assert ok == 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read() if proc.stdout is not None else ""
    with open_engine(f"sqlite:///{tmp_path / 'cli.db'}").connect() as c:
        n = c.execute(select(func.count()).where(usage_events.c.status == "ok")).scalar_one()
    assert n == 10, log


def test_demo_seeds_history_through_the_pipeline_once(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": "tk-admin-demo-test"}
    env.pop("TOKENOMY_DATABASE_URL", None)
    args = ["demo", "--port", str(port), "--sim-port", str(sim_port), "--dir", str(tmp_path)]

    def run_demo() -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenomy", *args, "--history", "2d"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "Press Ctrl-C" in line:
                    break
            r = httpx.get(
                f"http://127.0.0.1:{port}/v1/usage",
                headers={"Authorization": "Bearer tk-admin-demo-test"},
            )
            assert r.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            return "".join(lines)
        finally:
            if proc.poll() is None:
                proc.kill()

    first = run_demo()
    assert "seeded" in first and "API key:" in first
    with open_engine(f"sqlite:///{tmp_path / 'tokenomy.db'}").connect() as c:
        n = c.execute(select(func.count()).select_from(usage_events)).scalar_one()
        days = c.execute(
            select(func.count(func.distinct(usage_events.c.ts_ms // 86_400_000)))
        ).scalar_one()
    assert n > 10 and days == 2
    assert "not seeding again" in run_demo()
