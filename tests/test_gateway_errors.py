"""Bad input, bad keys and failing vendors: clear errors in the client's dialect, one record each."""

from __future__ import annotations

import socket
import time

import anthropic
import httpx
import openai
import pytest

from tests.conftest import VENDOR_KEY, Gateway, sim_faults, sim_served, sim_stats


def post(gateway: Gateway, path: str, body: object, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or gateway.key}"}
    if isinstance(body, bytes | str):
        return httpx.post(gateway.base_url + path, content=body, headers=headers)
    return httpx.post(gateway.base_url + path, json=body, headers=headers)


def assert_openai_error(r: httpx.Response, status: int, *words: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err
    return err  # type: ignore[no-any-return]


MSG = [{"role": "user", "content": "hi"}]


def test_missing_and_wrong_keys_are_401_in_each_dialect(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.base_url + "/chat/completions", json={"model": "sim-small", "messages": MSG}
    )
    assert_openai_error(r, 401, "API key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="tk-wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(
            base_url=gateway.url, api_key="tk-wrong", max_retries=0
        ).messages.create(
            model="sim-claude",
            max_tokens=10,
            messages=MSG,  # type: ignore[arg-type]
        )
    assert e.value.body["type"] == "error"  # type: ignore[index]
    assert e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_revoked_key_is_refused(gateway: Gateway) -> None:
    key = gateway.new_key()
    assert (
        post(gateway, "/chat/completions", {"model": "sim-small", "messages": MSG}, key).status_code
        == 200
    )
    rec = gateway.services.key_cache.lookup(key)
    assert rec is not None
    gateway.services.keys.revoke(rec.id)
    gateway.services.key_cache.revoke_local(rec.id)
    r = post(gateway, "/chat/completions", {"model": "sim-small", "messages": MSG}, key)
    assert_openai_error(r, 401)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ("not valid JSON",)),
        (b"[1, 2]", ("JSON object",)),
        (b"", ("empty",)),
        ({"messages": MSG}, ("model",)),
        ({"model": "sim-small"}, ("messages",)),
        ({"model": "sim-small", "messages": "hi"}, ("messages", "array")),
        ({"model": "sim-small", "messages": []}, ("at least one",)),
        ({"model": "sim-small", "messages": [{"role": "wizard", "content": "x"}]}, ("role",)),
        ({"model": "sim-small", "messages": MSG, "max_tokens": "ten"}, ("max_tokens", "integer")),
        ({"model": "sim-small", "messages": MSG, "temperature": 7}, ("temperature",)),
        ({"model": "sim-small", "messages": MSG, "stream": "yes"}, ("stream", "boolean")),
        ({"model": 5, "messages": MSG}, ("model",)),
        (
            {"model": "sim-small", "messages": [{"role": "user", "content": "x"}] * 51},
            ("Too many",),
        ),
    ],
)
def test_bad_chat_input_is_400(gateway: Gateway, body: object, words: tuple[str, ...]) -> None:
    assert_openai_error(post(gateway, "/chat/completions", body), 400, *words)


def test_unknown_model_is_404(gateway: Gateway) -> None:
    err = assert_openai_error(
        post(gateway, "/chat/completions", {"model": "nope", "messages": MSG}), 404, "nope"
    )
    assert err["code"] == "model_not_found"


def test_body_over_the_limit_is_413(gateway: Gateway) -> None:
    big = {"model": "sim-small", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_openai_error(post(gateway, "/chat/completions", big), 413, "limit")


def test_unknown_route_and_method(gateway: Gateway) -> None:
    assert_openai_error(post(gateway, "/nothing", {}), 404)
    r = httpx.get(gateway.base_url + "/chat/completions", headers={"Authorization": "Bearer x"})
    assert_openai_error(r, 405)


def test_anthropic_bad_input_uses_anthropic_errors(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.base_url + "/messages",
        json={"model": "sim-claude", "messages": MSG},
        headers={"x-api-key": gateway.key},
    )
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


@pytest.mark.parametrize(
    ("fault", "status", "sdk_error"),
    [
        ("429", 429, openai.RateLimitError),
        ("500", 502, openai.InternalServerError),
        ("timeout", 504, openai.InternalServerError),
    ],
)
def test_vendor_failures_map_to_gateway_statuses(
    gateway: Gateway, fault: str, status: int, sdk_error: type[Exception]
) -> None:
    sim_faults(gateway.sim_url, "single-a", [fault])
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    with pytest.raises(sdk_error) as e:
        c.chat.completions.create(model="single", messages=MSG)  # type: ignore[arg-type]
    resp = e.value.response  # type: ignore[attr-defined]
    assert resp.status_code == status
    if status == 429:
        assert int(resp.headers["retry-after"]) >= 1
    rid = resp.headers.get("x-request-id")
    rows = [r for r in gateway.wait_events(1, model="single") if r["http_status"] == status]
    assert rows and rows[-1]["status"] == "error"
    assert rid is None or rows[-1]["request_id"] == rid


def test_fallback_to_the_next_deployment(gateway: Gateway) -> None:
    before = sim_stats(gateway.sim_url)
    sim_faults(gateway.sim_url, "flaky-a", ["503"])
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="flaky", messages=MSG)  # type: ignore[arg-type]
    assert raw.headers["x-tokenomy-deployment"] == "sim-backup/flaky-b"
    (ev,) = gateway.wait_events(1, request_id=raw.headers["x-request-id"])
    assert ev["attempts"] == 2 and ev["deployment"] == "sim-backup/flaky-b"
    after = sim_stats(gateway.sim_url)
    assert sim_served(after, "flaky-b", "200") == sim_served(before, "flaky-b", "200") + 1


def test_vendor_credentials_never_leak(gateway: Gateway) -> None:
    sim_faults(gateway.sim_url, "single-a", ["500"])
    r = post(gateway, "/chat/completions", {"model": "single", "messages": MSG})
    assert r.status_code == 502
    assert VENDOR_KEY not in r.text and "sk-vendor" not in r.text


def test_stream_cut_by_vendor_is_billed_at_what_was_produced(gateway: Gateway) -> None:
    sim_faults(gateway.sim_url, "single-a", ["disconnect:3"])
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    stream = c.chat.completions.create(
        model="single",
        messages=MSG,
        stream=True,
        max_tokens=60,  # type: ignore[arg-type]
    )
    got = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    (ev,) = gateway.wait_events(1, request_id=stream.response.headers["x-request-id"])
    assert ev["status"] == "upstream_cut" and ev["usage_source"] == "counted"
    assert ev["output_tokens"] == gateway.services.counter.count_text("single-a", got) > 0


def test_client_disconnect_mid_stream_leaves_one_counted_event(gateway: Gateway) -> None:
    """A client that hangs up is still billed, once, for what was produced."""
    slow = gateway.new_key()
    sim_faults(gateway.sim_url, "single-a", ["slow"])
    body = (
        b'{"model":"single","stream":true,"max_tokens":2000,'
        b'"messages":[{"role":"user","content":"a long story please"}]}'
    )
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {slow}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", gateway.server.port)) as s:
        s.sendall(req)
        data = b""
        while data.count(b"data: ") < 3:
            data += s.recv(65536)
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in gateway.events(model="single") if r["key_id"] == _key_id(gateway, slow)]
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1
    ev = rows[0]
    assert ev["status"] == "cancelled" and ev["http_status"] == 499
    assert ev["usage_source"] == "counted" and 0 < int(ev["output_tokens"]) < 2000  # type: ignore[call-overload]
    time.sleep(0.3)
    assert len([r for r in gateway.events(model="single") if r["key_id"] == ev["key_id"]]) == 1


def _key_id(gateway: Gateway, secret: str) -> str:
    rec = gateway.services.key_cache.lookup(secret)
    assert rec is not None
    return rec.id
