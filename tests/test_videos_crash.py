"""The video queue survives SIGKILL: a gateway killed mid-render is restarted; every job
ends once, the jobs it was rendering resume the vendor's job, each is billed once, and
no hold is left. On PostgreSQL + Redis a second replica works the same queue throughout,
and the two together never render more than the deployment's capacity."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select

from tests.procs import Procs, running
from tests.video_stack import TOPUP, video_stack, video_yaml
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.schema import usage_events, video_jobs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

JOBS = 8
CAPACITY = 2


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_sigkill_mid_render_every_job_ends_once_billed_once(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    cfg = video_yaml(capacity=CAPACITY, lease_s=1.5, ratio=0.5)
    with video_stack(procs, tmp_path, backend, video_ms_per_second=400.0, videos=cfg) as st:
        org_id, key = st.org("org")
        replicas = [st.gw]
        if backend != "sqlite":
            replicas.append(st.procs.gateway(st.config, env=st.env, name="gateway-b"))
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        ids = [
            c.videos.create(model="sim-video", prompt=f"clip {i}", seconds="2").id
            for i in range(JOBS)
        ]

        def rendering() -> list[dict[str, object]]:
            with st.engine.connect() as conn:
                q = select(video_jobs).where(video_jobs.c.status == "in_progress")
                return [dict(r._mapping) for r in conn.execute(q)]

        deadline = time.monotonic() + 30
        while not [r for r in rendering() if r["upstream_id"] and r["progress"]]:
            assert time.monotonic() < deadline, "no render started"
            time.sleep(0.01)
        st.gw.kill()  # SIGKILL mid-render: leases held, vendor jobs running
        survivor = st.procs.gateway(st.config, env=st.env, name="gateway-restarted")
        c = openai.OpenAI(base_url=survivor.url + "/v1", api_key=key, max_retries=0)
        most = 0
        deadline = time.monotonic() + 90
        while True:
            most = max(most, len(rendering()))
            states = [c.videos.retrieve(i).status for i in ids]
            if all(s == "completed" for s in states):
                break
            assert "failed" not in states, states
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        assert most <= CAPACITY  # every replica together, also while leases lapsed
        with st.engine.connect() as conn:
            usage = [
                dict(r._mapping)
                for r in conn.execute(
                    select(usage_events).where(usage_events.c.request_id.in_(ids))
                )
            ]
            resumed = conn.execute(select(func.count()).where(video_jobs.c.attempts > 1)).scalar()
        assert sorted(u["request_id"] for u in usage) == sorted(ids)  # one record each
        assert all(u["cost_nanos"] == 2 * 10**8 for u in usage)
        assert resumed, "no job was taken over after the kill"
        ledger = LedgerStore(st.engine)
        assert ledger.balance(org_id) == TOPUP - JOBS * 2 * 10**8  # billed once each
        assert all(v == 0 for v in ledger.trial_balance().values())
        for g in [survivor, *replicas[1:]]:
            assert st.held(org_id, g) == 0
