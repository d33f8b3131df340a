"""What a vendor receives for a batch line: the request as sent, without tokenomy's own
``service_tier: "batch"`` (OpenAI's API knows no such tier, Anthropic's rejects it)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.services import build_services

CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "sim-small",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
MESSAGE_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "sim-claude",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
}


@pytest.fixture
def vendor() -> Iterator[tuple[ThreadServer, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(CHAT_ANSWER)

    async def messages(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(MESSAGE_ANSWER)

    def make() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/messages", messages)
        return app

    srv = ThreadServer(make).start()
    yield srv, seen
    srv.stop()


def test_batch_lines_reach_the_vendor_without_the_batch_service_tier(
    vendor: tuple[ThreadServer, list[dict[str, Any]]], tmp_path: Path
) -> None:
    upstream, seen = vendor
    svc = build_services(make_config(upstream.url, tmp_path), dict(os.environ))
    gw = ThreadServer(lambda: app_for(svc)).start()
    try:
        secret, rec = svc.keys.create("upstream test")
        svc.key_cache.put(secret, rec)
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
        line = {
            "custom_id": "a",
            "url": "/v1/chat/completions",
            "method": "POST",
            "body": {"model": "sim-small", "messages": [{"role": "user", "content": "x"}]},
        }
        fid = c.files.create(file=io.BytesIO(json.dumps(line).encode()), purpose="batch").id
        b = c.batches.create(
            input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
        )
        claude = anthropic.Anthropic(base_url=gw.url, api_key=secret, max_retries=0)
        mb = claude.messages.batches.create(
            requests=[
                {
                    "custom_id": "m",
                    "params": {
                        "model": "sim-claude",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": "x"}],
                    },
                }
            ]
        )
        deadline = time.monotonic() + 30
        while c.batches.retrieve(b.id).status != "completed" or (
            claude.messages.batches.retrieve(mb.id).processing_status != "ended"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert len(seen) == 2
        assert all("service_tier" not in body for body in seen), seen
    finally:
        gw.stop()
