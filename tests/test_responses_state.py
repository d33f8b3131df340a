"""Responses-API state lives in the database: a previous_response_id chain continues on
another replica at once and survives a restart of every gateway, on SQLite and on
PostgreSQL + Redis."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import openai
import pytest

from tests.conftest import ADMIN_KEY, make_config, throwaway_postgres
from tests.needs import require_redis
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.core.keys import ApiKey
from tokenomy.services import Services, build_services


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_chain_crosses_replicas_and_survives_a_restart(
    sim: ThreadServer, tmp_path: Path, backend: str
) -> None:
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY}
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            cfg = make_config(sim.url, tmp_path)
        else:
            db = stack.enter_context(throwaway_postgres())
            cfg = make_config(sim.url, tmp_path, db_url=db, redis_url=require_redis())
        servers: list[ThreadServer] = []

        def replica(key: tuple[str, ApiKey] | None = None) -> tuple[Services, openai.OpenAI]:
            svc = build_services(cfg, env)
            srv = ThreadServer(lambda: app_for(svc)).start()
            servers.append(srv)
            secret, rec = key or svc.keys.create("replicas")
            svc.key_cache.put(secret, rec)
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key=secret, max_retries=0)
            return svc, client

        svc_a, a = replica()
        secret = a.api_key
        rec = svc_a.key_cache.lookup(secret)
        assert rec is not None
        _, b = replica((secret, rec))

        first = a.responses.create(model="sim-small", input="Remember the number 7.")
        # Straight to the other replica: it reads the chain from the database.
        second = b.responses.create(
            model="sim-small", previous_response_id=first.id, input="Which number was it?"
        )
        assert second.previous_response_id == first.id
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

        for srv in servers:
            srv.stop()  # drains the stored answers' writes
        servers.clear()

        # Every gateway restarted: new services over the same database.
        _, c = replica((secret, rec))
        got = c.responses.retrieve(second.id)
        assert got.output_text == second.output_text
        items = c.responses.input_items.list(second.id)
        assert [i.content[0].text for i in items.data] == ["Which number was it?"]  # type: ignore[union-attr]
        third = c.responses.create(
            model="sim-small", previous_response_id=second.id, input="And doubled?"
        )
        assert third.usage is not None
        assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
        for srv in servers:
            srv.stop()
