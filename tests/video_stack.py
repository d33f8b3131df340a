"""A gateway and a simulator serving ``sim-video``, as real processes, for the video tests."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select

from tests.procs import Proc, Procs, backend_database, funded_org, gateway_yaml
from tokenomy.store.schema import usage_events, video_jobs

ADMIN = "tk-admin-video-0123456789abcdef"
TOPUP = 1000 * 10**9  # 1,000 USD


@dataclass
class VideoStack:
    procs: Procs
    engine: Engine
    config: Path
    sim: Proc
    gw: Proc
    env: dict[str, str]
    #: Org name -> (org id, a key's secret), made before the gateway started.
    orgs: dict[str, tuple[str, str]]

    def org(self, name: str) -> tuple[str, str]:
        return self.orgs[name]

    def held(self, org_id: str, gw: Proc | None = None) -> int:
        r = httpx.get(
            f"{(gw or self.gw).url}/admin/orgs/{org_id}/balance",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        r.raise_for_status()
        return int(r.json()["held_nanos"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(video_jobs).where(video_jobs.c.id == job_id)).first()
        assert row is not None
        return dict(row._mapping)

    def usage(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = select(usage_events).where(usage_events.c.request_id == job_id)
            return [dict(r._mapping) for r in conn.execute(q)]


def video_yaml(
    *,
    capacity: int = 2,
    depth: int = 1000,
    ratio: float = 0.2,
    lease_s: float = 3.0,
    upstream_poll_s: float = 0.02,
) -> str:
    return f"""
videos:
  poll_s: 0.05
  upstream_poll_s: {upstream_poll_s}
  lease_s: {lease_s}
  default_render_ratio: {ratio}
  models:
    - {{name: sim-video, vendor: sim, capacity: {capacity}, max_queue_depth: {depth}}}
"""


@contextlib.contextmanager
def video_stack(
    procs: Procs,
    tmp_path: Path,
    backend: str = "sqlite",
    *,
    video_ms_per_second: float = 50.0,
    videos: str | None = None,
    orgs: tuple[str, ...] = ("org",),
    vendors: dict[str, str] | None = None,
) -> Iterator[VideoStack]:
    """``vendors``: more vendors (name -> YAML flow mapping) beside the simulator."""
    with backend_database(backend, tmp_path) as (engine, db_url, redis_url):
        made = {name: funded_org(engine, name, TOPUP) for name in orgs}
        sim = procs.sim(video_ms_per_second=video_ms_per_second)
        text = gateway_yaml(
            sim.url,
            db_url,
            redis_url=redis_url,
            redis_prefix=f"tkv:{secrets.token_hex(4)}:",
            extra=videos if videos is not None else video_yaml(),
        )
        for name, spec in (vendors or {}).items():
            text = text.replace("vendors:\n", f"vendors:\n  {name}: {spec}\n", 1)
        config = procs.write_config(text)
        env = {"TOKENOMY_ADMIN_KEY": ADMIN}
        gw = procs.gateway(config, env=env)
        yield VideoStack(procs, engine, config, sim, gw, env, made)


def wait_status(get: Any, statuses: set[str], timeout: float = 30.0) -> Any:
    """Poll ``get()`` until its ``status`` is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        v = get()
        if v.status in statuses:
            return v
        assert time.monotonic() < deadline, v
        time.sleep(0.02)
