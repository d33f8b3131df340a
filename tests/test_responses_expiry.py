"""Stored responses expire like OpenAI's (30 days): an older one is unknown at once, to
retrieval and to ``previous_response_id``, and a background purge deletes its row."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import orjson
import pytest
from sqlalchemy import func, insert, select, update

from tests.conftest import Gateway
from tokenomy.core.ids import stamped_id
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.responses import RETENTION_MS, ResponseStore, StoredResponse
from tokenomy.store.schema import responses

DAY_MS = 86_400_000


def old_row(owner: str, age_ms: int) -> dict[str, object]:
    rid = stamped_id("resp_")
    return {
        "id": rid,
        "owner": owner,
        "created_ms": int(time.time() * 1000) - age_ms,
        "response": orjson.dumps({"id": rid, "object": "response", "output": []}).decode(),
        "input_items": "[]",
        "context": orjson.dumps([{"role": "user", "content": "old"}]).decode(),
    }


def test_a_response_past_its_retention_is_unknown_and_purged(gateway: Gateway) -> None:
    org = gateway.new_org(10**10)
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.new_key(org_id=org), max_retries=0)
    fresh = c.responses.create(model="sim-small", input="hi")
    stale = old_row(org, RETENTION_MS + DAY_MS)
    kept = old_row(org, RETENTION_MS - DAY_MS)
    with gateway.services.engine.begin() as conn:
        conn.execute(insert(responses), [stale, kept])
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(str(stale["id"]))
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model="sim-small", input="more", previous_response_id=str(stale["id"]))
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert c.responses.retrieve(str(kept["id"])).id == kept["id"]  # 29 days: still kept
    chained = c.responses.create(model="sim-small", input="more", previous_response_id=fresh.id)
    assert chained.id != fresh.id
    # The purge deletes the stale row only.
    assert ResponseStore(gateway.services.engine).purge() >= 1
    with gateway.services.engine.connect() as conn:
        ids = set(conn.execute(select(responses.c.id)).scalars())
    assert stale["id"] not in ids and {kept["id"], fresh.id} <= ids


def test_an_answer_cached_in_memory_expires_too(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)

    async def run() -> tuple[bool, bool]:
        store = ResponseStore(engine, retention_ms=200)
        s = StoredResponse(stamped_id("resp_"), "org_a", int(time.time() * 1000), {}, [], [])
        store.put(s)
        await store.drain()
        before = await store.get("org_a", s.id) is not None
        await asyncio.sleep(0.3)
        return before, await store.get("org_a", s.id) is None

    assert asyncio.run(run()) == (True, True)


def test_the_background_purge_runs_in_batches_until_cancelled(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    rows = [old_row("org_a", RETENTION_MS + DAY_MS) for _ in range(2500)]
    rows.append(old_row("org_a", DAY_MS))
    with engine.begin() as conn:
        conn.execute(insert(responses), rows)

    async def run() -> None:
        task = asyncio.create_task(ResponseStore(engine).purge_every(0.05, first_after_s=0))
        for _ in range(100):
            await asyncio.sleep(0.05)
            with engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(responses)).scalar_one() == 1:
                    break
        # Rows that age past their retention later go on a later round.
        with engine.begin() as conn:
            conn.execute(update(responses).values(created_ms=0))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(responses)).scalar_one() == 0
