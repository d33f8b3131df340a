"""POST /v1/feedback and `tokenomy router export`, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_KEY, Gateway, gateway_yaml, throwaway_postgres
from tests.servers import ThreadServer
from tests.test_gateway_auto import MSGS, POOL
from tokenomy.app import app_for
from tokenomy.cli.main import main
from tokenomy.config import parse_config
from tokenomy.routing import routerbench
from tokenomy.services import build_services
from tokenomy.store.schema import request_feedback


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fb_gw(
    request: pytest.FixtureRequest, sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    """A gateway with an auto pool, and its config written to a file (for the CLI)."""
    tmp = tmp_path_factory.mktemp("feedback")
    with contextlib.ExitStack() as stack:
        db = f"sqlite:///{tmp / 'gw.db'}"
        if request.param == "postgres":
            db = stack.enter_context(throwaway_postgres())
        text = gateway_yaml(sim.url, db, POOL)
        cfg_file = tmp / "gw.yaml"
        cfg_file.write_text(text)
        svc = build_services(
            parse_config(text, "test"), {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY}
        )
        srv = ThreadServer(lambda: app_for(svc)).start()
        secret, rec = svc.keys.create("fb")
        svc.key_cache.put(secret, rec)
        yield Gateway(srv, svc, secret, sim.url), cfg_file
        srv.stop()


def feedback(gw: Gateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def org_key(gw: Gateway) -> tuple[str, str]:
    org = gw.new_org(10**10)
    return org, gw.new_key(org_id=org)


def test_feedback_is_kept_with_the_request_and_exported_as_a_training_row(
    fb_gw: tuple[Gateway, Path], tmp_path: Path
) -> None:
    gw, cfg_file = fb_gw
    org, key = org_key(gw)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="auto", messages=MSGS, max_tokens=8)
    rid = raw.headers["x-request-id"]
    served = raw.parse().model
    # Sent at once: the usage record may still be in the writer's batch.
    r = feedback(gw, key, request_id=rid, score=0.25, comment="wrong letter")
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "feedback", "request_id": rid, "score": 0.25}
    r = feedback(gw, key, request_id=rid, score=1)  # the latest score counts
    assert r.status_code == 200
    with gw.services.engine.connect() as conn:
        rows = conn.execute(select(request_feedback)).mappings().all()
    [row] = [x for x in rows if x["request_id"] == rid]
    assert row["score"] == 1.0 and row["org_id"] == org and row["comment"] is None
    assert row["prompt"].endswith("Answer:")
    # A request that did not go through auto: the client sends the prompt along.
    other = c.chat.completions.with_raw_response.create(
        model="auto-mid",
        messages=[{"role": "user", "content": "Write a function to add."}],
        max_tokens=8,
    )
    rid2 = other.headers["x-request-id"]
    assert (
        feedback(gw, key, request_id=rid2, score=0, prompt="Write a function to add.").status_code
        == 200
    )

    out = tmp_path / "mine.csv"
    assert (
        main(["router", "export", "--config", str(cfg_file), "--org", org, "--out", str(out)]) == 0
    )
    data = routerbench.load(out, complete=False)
    assert data.models == (
        "gpt-4-1106-preview",
        "zero-one-ai/Yi-34B-Chat",
        "mistralai/mistral-7b-chat",
    )
    by_id = {r.sample_id: r for r in data.rows}
    names = ["auto-dear", "auto-mid", "auto-cheap"]
    col = names.index(served)
    first = by_id[rid]
    assert first.quality[col] == 1.0 and first.prompt.endswith("Answer:")
    assert first.cost[col] > 0
    assert all(math.isnan(q) for i, q in enumerate(first.quality) if i != col)
    second = by_id[rid2]
    assert second.quality[1] == 0.0 and second.prompt == "Write a function to add."


def test_feedback_only_on_the_keys_own_organisations_requests(fb_gw: tuple[Gateway, Path]) -> None:
    gw, _ = fb_gw
    org, key = org_key(gw)
    _, stranger = org_key(gw)
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    rid = c.chat.completions.with_raw_response.create(
        model="auto", messages=MSGS, max_tokens=8
    ).headers["x-request-id"]
    r = feedback(gw, stranger, request_id=rid, score=0.5)
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    r = feedback(gw, key, request_id="req_nope", score=0.5)
    assert r.status_code == 404
    # Another key of the same organisation may score it.
    assert feedback(gw, gw.new_key(org_id=org), request_id=rid, score=0.5).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"score": 0.5}, "request_id"),
        ({"request_id": "x", "score": 1.5}, "score"),
        ({"request_id": "x", "score": True}, "score"),
        ({"request_id": "x", "score": "0.5"}, "score"),
        ({"request_id": "x"}, "score"),
        ({"request_id": "x", "score": 0.5, "comment": 5}, "comment"),
        # PostgreSQL refuses a NUL in text: a 400 here, never a 500 from the database.
        ({"request_id": "req_\u0000", "score": 0.5}, "request_id"),
        ({"request_id": "x", "score": 0.5, "comment": "a\u0000b"}, "comment"),
        ({"request_id": "x", "score": 0.5, "prompt": "\u0000"}, "prompt"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(
    fb_gw: tuple[Gateway, Path], body: dict[str, Any], param: str
) -> None:
    gw, _ = fb_gw
    r = feedback(gw, gw.key, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_feedback_needs_a_key(fb_gw: tuple[Gateway, Path]) -> None:
    gw, _ = fb_gw
    r = httpx.post(gw.base_url + "/feedback", json={"request_id": "x", "score": 1})
    assert r.status_code == 401
