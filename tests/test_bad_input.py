"""Bad input found by fuzzing: each once answered 500; each is a 4xx in the client's dialect."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Gateway

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ) as c:
        yield c


def openai_error(r: httpx.Response, status: int = 400) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


def anthropic_error(r: httpx.Response, status: int = 400) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    return body["error"]  # type: ignore[no-any-return]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [256, 600, 1023])
def test_deeply_nested_json_is_a_400_naming_the_depth(client: httpx.Client, depth: int) -> None:
    body = (
        b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "x": '
        + nested(depth)
        + b"}"
    )
    err = openai_error(client.post("/v1/chat/completions", content=body))
    assert "nested" in str(err["message"])


def test_nesting_up_to_the_limit_is_served(client: httpx.Client) -> None:
    body = (
        b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "x": '
        + nested(120)
        + b"}"
    )
    r = client.post("/v1/chat/completions", content=body)
    assert r.status_code == 200, r.text


def test_deeply_nested_json_on_messages_is_an_anthropic_400(client: httpx.Client) -> None:
    body = (
        b'{"model": "sim-claude", "max_tokens": 5, "messages": '
        b'[{"role": "user", "content": "hi"}], "metadata": ' + nested(300) + b"}"
    )
    err = anthropic_error(client.post("/v1/messages", content=body))
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("role", [["user"], {"a": 1}])
def test_a_role_that_is_an_array_or_object_is_a_400(client: httpx.Client, role: object) -> None:
    body = {"model": "sim-small", "messages": [{"role": role, "content": "hi"}]}
    err = openai_error(client.post("/v1/chat/completions", json=body))
    assert err["param"] == "messages[0].role"
    body = {"model": "sim-claude", "max_tokens": 5, "messages": [{"role": role, "content": "x"}]}
    err = anthropic_error(client.post("/v1/messages", json=body))
    assert "messages[0].role" in str(err["message"])


def test_completions_stream_options_that_is_not_an_object_is_a_400(client: httpx.Client) -> None:
    body = {"model": "sim-small", "prompt": "hi", "stream": True, "stream_options": "x"}
    err = openai_error(client.post("/v1/completions", json=body))
    assert err["param"] == "stream_options"


@pytest.mark.parametrize("path", ["/v1/usage", "/dashboard"])
@pytest.mark.parametrize(
    "query",
    [
        "end=99999999999999999999",
        "start=99999999999999999999",
        "end=%C2%B2",  # a superscript two: a digit to str.isdigit, not to int()
        "start=%C2%B2",
    ],
)
def test_a_time_out_of_range_is_a_400(admin: httpx.Client, path: str, query: str) -> None:
    r = admin.get(f"{path}?{query}")
    assert r.status_code == 400, r.text
    if path == "/v1/usage":
        openai_error(r)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/requests/%00",
        "/admin/orgs/org%00x",
        "/admin/orgs/org%00x/balance",
        "/admin/orgs/org%00x/projects",
        "/admin/orgs/org%00x/statement",
        "/admin/budgets?scope_id=%00",
        "/admin/keys?include_revoked=%00",
    ],
)
def test_a_nul_byte_in_a_path_or_query_is_a_400(admin: httpx.Client, path: str) -> None:
    openai_error(admin.get(path))


@pytest.mark.parametrize("segment", ["topups", "credits", "refunds", "adjustments", "projects"])
def test_a_nul_byte_in_an_org_id_is_a_400_on_posts(admin: httpx.Client, segment: str) -> None:
    openai_error(admin.post(f"/admin/orgs/o%00/{segment}", json={"amount": "1", "name": "p"}))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/orgs", {"name": "Acme\u0000"}),
        ("/admin/keys", {"name": "k\u0000"}),
        ("/admin/keys", {"name": "k", "org_id": "o\u0000"}),
        ("/admin/keys", {"name": "k", "project_id": "p\u0000"}),
        ("/admin/budgets", {"scope": "org", "scope_id": "o\u0000", "period": "day", "amount": "1"}),
    ],
)
def test_a_nul_byte_in_an_admin_body_is_a_400(admin: httpx.Client, path: str, body: object) -> None:
    openai_error(admin.post(path, json=body))


def test_a_nul_byte_in_a_memo_is_a_400(admin: httpx.Client) -> None:
    org = admin.post("/admin/orgs", json={"name": "Nul memo"}).json()
    r = admin.post(f"/admin/orgs/{org['id']}/topups", json={"amount": "1", "memo": "a\u0000b"})
    openai_error(r)


@pytest.mark.parametrize("block", [{"type": {}}, {"type": ["text"]}, "text", 5])
def test_a_system_block_or_content_part_of_the_wrong_shape_is_a_400(
    client: httpx.Client, block: object
) -> None:
    body = {"model": "sim-small", "max_tokens": 5, "system": [block], "messages": MSG}
    err = anthropic_error(client.post("/v1/messages", json=body))
    assert "system[0]" in str(err["message"])
    parts = [{"role": "user", "content": [block]}]
    err = openai_error(
        client.post("/v1/chat/completions", json={"model": "sim-small", "messages": parts})
    )
    assert str(err["param"]).startswith("messages[0].content[0]")


@pytest.mark.parametrize("model", ["m" * 201, "sim-small\u0000"])
def test_a_model_name_too_long_or_with_a_nul_is_a_400(client: httpx.Client, model: str) -> None:
    err = openai_error(client.post("/v1/chat/completions", json={"model": model, "messages": MSG}))
    assert err["param"] == "model"


@pytest.mark.parametrize(
    "path", ["/v1/models", "/admin/keys", "/metrics", "/v1/usage", "/v1/queue"]
)
@pytest.mark.parametrize("header", [b"Authorization: Bearer \xffk-x", b"x-api-key: \xff\xfe"])
def test_a_key_that_is_not_utf8_is_a_401(gateway: Gateway, path: str, header: bytes) -> None:
    head = b"GET %b HTTP/1.1\r\nHost: gw\r\n%b\r\nConnection: close\r\n\r\n" % (
        path.encode(),
        header,
    )
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5) as s:
        s.sendall(head)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    assert status == 401, raw[:400]


@pytest.mark.parametrize("form", [b"key=%FF%FE", b"key=\xff", b"%FF=1"])
def test_a_login_form_that_is_not_utf8_is_refused_not_a_500(gateway: Gateway, form: bytes) -> None:
    r = httpx.post(
        gateway.url + "/dashboard/login",
        content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert 300 <= r.status_code < 500, r.text
