"""Fuzzing every route: no input, however wrong, gets a 5xx or a connection left hanging.

A seeded generator (``TOKENOMY_FUZZ_SEED`` replays a run; a fresh seed each run otherwise)
mutates valid requests to each route: wrong JSON types at every field, deep nesting, huge
numbers, NUL bytes, invalid UTF-8, unicode, missing fields, odd query strings, headers and
methods. The requests go over keep-alive raw sockets to a real gateway (PostgreSQL and
Redis, served through the lean server) whose simulated vendor never fails, so any 5xx is
the gateway's own. API errors must also come in the route's JSON dialect.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11
import pytest

from tests.conftest import ADMIN_KEY, make_config, throwaway_postgres
from tests.needs import require_redis
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.services import Services, build_services

CASES = int(os.environ.get("TOKENOMY_FUZZ_CASES", "10000"))
#: Longer than any answer of the simulator takes; past it the connection counts as hung.
TIMEOUT_S = 10.0

MODELS = [
    "sim-small",
    "sim-claude",
    "sim-embed",
    "routed",
    "placed",
    "limited",
    "silent",
    "inline",
    "ds-reasoner",
    "opus",
    "single",
    "no-tools",
    "nope",
    "",
    "small",
]

# Placeholders replaced in the serialised body by text JSON libraries will not write.
DEEP = "\ue000deep\ue000"
HUGE = "\ue000huge\ue000"
BADUTF8 = "\ue000utf8\ue000"
RAW = {
    json.dumps(DEEP): None,  # filled per case
    json.dumps(HUGE): b"99999999999999999999999999999",
    json.dumps(BADUTF8): b'"\xff\xfe\xc0\xaf"',
}

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "日本語",
    "\U0001f600",
    "\u202e",
    "x" * 5000,
    "null",
    "-1",
    "1e999",
    "NaN",
    "99999999999999999999",
    "²",
    "../..",
    "%00",
    "<script>",
]
ODD_QUERY = [
    "",
    "0",
    "-1",
    "99999999999999999999",
    "1e9",
    "nan",
    "inf",
    "²",
    "%00",
    "%ff",
    "%C0%AF",
    "2026-02-30",
    "2026-13-01",
    "9999-12-31",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01",
    "1970-01-01",
    "usage,summary",
    "org,key",
    "%E6%97%A5",
    "a" * 3000,
    "%20",
    "+",
    "x%00y",
]


def odd_value(rng: random.Random) -> Any:
    """A JSON value of a type (or size) no field expects."""
    pick = rng.randrange(16)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**18])
    if pick == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e308, 3.14, 1e-300])
    if pick == 4:
        return rng.choice(ODD_STRINGS)
    if pick == 5:
        return []
    if pick == 6:
        return {}
    if pick == 7:
        return [rng.choice(ODD_STRINGS), 1, None]
    if pick == 8:
        return {"a": {"b": [1, {"c": None}]}, "": 1}
    if pick == 9:
        return DEEP
    if pick == 10:
        return HUGE
    if pick == 11:
        return BADUTF8
    if pick == 12:
        return [{"role": rng.choice(ODD_STRINGS)}]
    if pick == 13:
        return {"include_usage": odd_value(rng)} if rng.random() < 0.5 else "x"
    if pick == 14:
        return rng.choice(["user", "assistant", "system", "tool", "float", "base64", "USD"])
    return rng.choice(MODELS)


def mutate(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with one to three fields (top level or one down) wrong, gone or added."""
    for _ in range(rng.randint(1, 3)):
        target: Any = body
        if rng.random() < 0.4:
            inner = [v for v in body.values() if isinstance(v, dict | list) and v]
            if inner:
                target = rng.choice(inner)
                if isinstance(target, list):
                    target = rng.choice(target)
        if not isinstance(target, dict):
            continue
        keys = list(target)
        roll = rng.random()
        if keys and roll < 0.6:
            target[rng.choice(keys)] = odd_value(rng)
        elif keys and roll < 0.8:
            del target[rng.choice(keys)]
        else:
            target[rng.choice(["n", "stream", "tools", "x", "provider", "metadata", "\x00"])] = (
                odd_value(rng)
            )
    return body


def serialise(rng: random.Random, body: Any) -> bytes:
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    for placeholder, value in RAW.items():
        if placeholder.encode() in raw:
            if value is None:
                depth = rng.choice([100, 129, 254, 256, 600, 1023, 1024, 1025, 5000])
                value = b"[" * depth + b"]" * depth
            raw = raw.replace(placeholder.encode(), value)
    roll = rng.random()
    if roll < 0.03:
        raw = raw[: rng.randrange(len(raw) + 1)]  # truncated
    elif roll < 0.05:
        raw = raw.replace(b'"', b"'", 1)
    elif roll < 0.06:
        raw = b"\xef\xbb\xbf" + raw  # a byte-order mark
    return raw


def chat_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": rng.choice(MODELS[:3]),
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "max_tokens": 5,
    }
    if rng.random() < 0.3:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.2:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    if rng.random() < 0.2:
        body["provider"] = {"order": ["sim"], "sort": "price", "max_price": {"prompt": 1}}
    if rng.random() < 0.1:
        body["n"] = 2
        body["response_format"] = {"type": "json_object"}
    return body


def messages_body(rng: random.Random) -> dict[str, Any]:
    return {
        "model": rng.choice(["sim-claude", "sim-small", "opus"]),
        "max_tokens": 5,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": rng.random() < 0.3,
    }


INFERENCE: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "/v1/chat/completions": chat_body,
    "/v1/messages": messages_body,
    "/v1/completions": lambda rng: {
        "model": "sim-small",
        "prompt": "hi",
        "max_tokens": 5,
        "stream": rng.random() < 0.3,
        "stream_options": {"include_usage": True},
    },
    "/v1/embeddings": lambda rng: {
        "model": "sim-embed",
        "input": ["a", "b"],
        "encoding_format": "float",
    },
}


@dataclass
class Case:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    raw_head_extra: bytes = b""

    raw: bytes | None = None  # the exact bytes to send, when the head itself is mutated

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: gw"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        head = "\r\n".join(lines).encode("utf-8") + b"\r\n" + self.raw_head_extra
        return head + b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body

    def describe(self) -> str:
        if self.raw is not None:
            return f"raw {self.raw[:400]!r}"
        return f"{self.method} {self.path[:200]} {self.headers} body={self.body[:300]!r}"


@dataclass
class World:
    """What the generator may aim at: real keys, orgs and request ids of the gateway."""

    key: str
    org_id: str
    key_ids: list[str]
    budget_ids: list[str]


def auth(rng: random.Random, world: World, admin: bool = False) -> dict[str, str]:
    roll = rng.random()
    secret = ADMIN_KEY if admin else world.key
    if roll < 0.8:
        return {"Authorization": f"Bearer {secret}"}
    if roll < 0.85:
        return {"x-api-key": secret}
    return rng.choice(
        [
            {},
            {"Authorization": "Bearer "},
            {"Authorization": "Basic eDp5"},
            {"Authorization": "Bearer tk-wrong"},
            {"x-api-key": "\u00ff"},
            {"api-key": "a" * 4000},
            {"Authorization": f"bearer   {secret}  "},
        ]
    )


def odd_headers(rng: random.Random) -> dict[str, str]:
    h: dict[str, str] = {}
    if rng.random() < 0.15:
        h["X-Tokenomy-Max-Wait"] = rng.choice(["nan", "inf", "-1", "1e999", "", "0", "x", "5"])
    if rng.random() < 0.15:
        h["X-Tokenomy-Deadline"] = rng.choice(["nan", "-0", "1e999", "", "86400", "²", "3"])
    if rng.random() < 0.1:
        h["Idempotency-Key"] = rng.choice(["", "a" * 100, "ok-1", "é", "a b"])
    if rng.random() < 0.1:
        h["Content-Type"] = rng.choice(["text/plain", "application/json; charset=latin-1", ""])
    if rng.random() < 0.1:
        h["Cookie"] = "tokenomy_dashboard=" + rng.choice(["", "x.y.z", "admin.1.", "a" * 3000])
    if rng.random() < 0.05:
        h["Accept-Encoding"] = "gzip, br, zstd"
    return h


def odd_id(rng: random.Random, real: list[str]) -> str:
    if real and rng.random() < 0.3:
        return rng.choice(real)
    return rng.choice(
        ["%00", "%ff", "x" * 500, "%E6%97%A5", "..", "%2F", "org_0", "-", "1", "%20", "a%00b"]
    )


def query(rng: random.Random, names: list[str]) -> str:
    parts = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice([*names, "x", "%00", ""])
        value = rng.choice(ODD_QUERY) if rng.random() < 0.7 else quote(rng.choice(ODD_STRINGS))
        parts.append(f"{name}={value}")
    return ("?" + "&".join(parts)) if parts else ""


USAGE_PARAMS = [
    "view",
    "start",
    "end",
    "days",
    "granularity",
    "group_by",
    "reference",
    "org_id",
    "key_id",
    "limit",
    "metric",
    "model",
    "format",
]


def admin_case(rng: random.Random, world: World) -> Case:
    org = odd_id(rng, [world.org_id])
    roll = rng.randrange(13)
    hdr = {**auth(rng, world, admin=True), **odd_headers(rng)}

    def post(path: str, body: dict[str, Any]) -> Case:
        return Case("POST", path, serialise(rng, mutate(rng, body)), hdr)

    if roll == 0:
        return post("/admin/orgs", {"name": "Fuzz", "currency": "USD", "mode": "prepaid"})
    if roll == 1:
        return post("/admin/keys", {"name": "k", "models": ["sim-small"], "org_id": world.org_id})
    if roll == 2:
        return post(
            "/admin/budgets",
            {
                "scope": "org",
                "scope_id": world.org_id,
                "period": "day",
                "amount": "1",
                "token_limit": 10,
                "tz": "Asia/Shanghai",
            },
        )
    if roll == 3:
        segment = rng.choice(["topups", "credits", "refunds", "adjustments"])
        return post(
            f"/admin/orgs/{org}/{segment}", {"amount": "0.01", "memo": "m", "idempotency_key": "k"}
        )
    if roll == 4:
        return post(f"/admin/orgs/{org}/projects", {"name": "p"})
    if roll == 5:
        return Case("DELETE", f"/admin/keys/{odd_id(rng, world.key_ids)}", b"", hdr)
    if roll == 6:
        return Case("DELETE", f"/admin/budgets/{odd_id(rng, world.budget_ids)}", b"", hdr)
    if roll == 7:
        q = query(rng, ["format", "since", "until"])
        return Case("GET", f"/admin/orgs/{org}/statement{q}", b"", hdr)
    if roll == 8:
        sub = rng.choice(["", "/balance", "/projects"])
        return Case("GET", f"/admin/orgs/{org}{sub}", b"", hdr)
    if roll == 9:
        return Case("GET", f"/admin/requests/{odd_id(rng, [])}", b"", hdr)
    if roll == 10:
        return Case("GET", "/admin/budgets" + query(rng, ["scope", "scope_id"]), b"", hdr)
    if roll == 11:
        return Case("GET", "/admin/dead-letters" + query(rng, ["limit"]), b"", hdr)
    return Case("GET", "/admin/keys" + query(rng, ["include_revoked"]), b"", hdr)


def read_case(rng: random.Random, world: World) -> Case:
    admin = rng.random() < 0.5
    hdr = {**auth(rng, world, admin=admin), **odd_headers(rng)}
    # Usage and the dashboard cost tens of ms each (they bring the roll-ups up to date
    # first): fewer of them keep the run within a minute.
    roll = rng.randrange(48)
    if roll < 3:
        return Case("GET", "/v1/usage" + query(rng, USAGE_PARAMS), b"", hdr)
    if roll < 5:
        return Case("GET", "/dashboard" + query(rng, [*USAGE_PARAMS, "key"]), b"", hdr)
    if roll < 11:
        form = f"key={quote(rng.choice([world.key, ADMIN_KEY, *ODD_STRINGS]))}"
        hdr["Content-Type"] = "application/x-www-form-urlencoded"
        return Case("POST", "/dashboard/login", form.encode(), hdr)
    if roll == 11:  # an unknown id waits for the next group commit: rarer than the rest
        body = {"request_id": odd_id(rng, []), "score": 0.5, "comment": "c", "prompt": "p"}
        return Case("POST", "/v1/feedback", serialise(rng, mutate(rng, body)), hdr)
    path = rng.choice(
        [
            "/v1/models",
            f"/v1/models/{odd_id(rng, MODELS)}",
            "/v1/queue",
            "/metrics",
            "/healthz",
            "/dashboard/live",
            "/dashboard/logout",
            "/",
            "/v1",
            "/v1/nothing",
        ]
    )
    return Case("GET", path + query(rng, ["x"]), b"", hdr)


ALL_PATHS = [
    *INFERENCE,
    "/v1/models",
    "/v1/usage",
    "/dashboard",
    "/admin/orgs",
    "/admin/keys",
    "/metrics",
    "/healthz",
    "/admin/budgets",
]


def garbled(rng: random.Random, case: Case) -> Case:
    """``case`` with one to three bytes of its head replaced, inserted or removed."""
    raw = bytearray(case.encode())
    head_end = raw.find(b"\r\n\r\n") + 4
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(min(head_end, len(raw)))
        byte = rng.choice(b"\x00\r\n :/\x7f\xff\x16aZ0")
        roll = rng.random()
        if roll < 0.4:
            raw[i] = byte
        elif roll < 0.7:
            raw.insert(i, byte)
        else:
            del raw[i]
    case.raw = bytes(raw)
    return case


RAW_HEADERS = [b"X-Raw: \xff\xfe\r\n", b"x-api-key: \xff\r\n", b"Cookie: \xc0\xaf=\xff\r\n",
               b"X-Tokenomy-Max-Wait: \xb2\r\n", b"Idempotency-Key: \xe6\x97\xa5\r\n"]  # fmt: skip


def make_case(rng: random.Random, world: World) -> Case:
    roll = rng.random()
    if roll < 0.02:
        return garbled(rng, make_case(rng, world))
    if roll < 0.05:  # header bytes that are not UTF-8 (or not ASCII)
        case = make_case(rng, world)
        case.raw_head_extra = rng.choice(RAW_HEADERS)
        return case
    if roll < 0.5:
        path = rng.choice(list(INFERENCE))
        body = INFERENCE[path](rng)
        if rng.random() < 0.9:
            body = mutate(rng, body)
        hdr = {**auth(rng, world), **odd_headers(rng)}
        if path == "/v1/messages" and rng.random() < 0.5:
            hdr["anthropic-version"] = "2023-06-01"
        return Case("POST", path, serialise(rng, body), hdr)
    if roll < 0.7:
        return admin_case(rng, world)
    if roll < 0.88:
        return read_case(rng, world)
    method = rng.choice(["PUT", "PATCH", "OPTIONS", "HEAD", "DELETE", "GET", "FOO", "TRACE"])
    hdr = {**auth(rng, world, admin=rng.random() < 0.5), **odd_headers(rng)}
    body = rng.choice([b"", b"{}", b"\x00\xff", b"[" * 300])
    return Case(method, rng.choice(ALL_PATHS), body, hdr)


class Conn:
    """A keep-alive connection; answers read with h11 (independent of the server)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def exchange(self, case: Case) -> tuple[int, dict[str, str], bytes]:
        """The answer to ``case``; a reused connection the server had closed between
        requests (as HTTP/1.1 allows) is replaced once."""
        reused = self.sock is not None
        try:
            return self._exchange(case)
        except (ConnectionResetError, BrokenPipeError, h11.RemoteProtocolError):
            self.close()
            if not reused:
                raise
        return self._exchange(case)

    def _exchange(self, case: Case) -> tuple[int, dict[str, str], bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)
        reader = h11.Connection(h11.CLIENT)
        # h11 tracks both sides: tell it what went (HEAD answers have no body).
        reader.send(h11.Request(method=case.method, target="/", headers=[("Host", "gw")]))
        reader.send(h11.EndOfMessage())
        self.sock.sendall(case.encode())
        status, headers, body = 0, {}, b""
        while True:
            event = reader.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                reader.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("closed before an answer")
        if headers.get("connection", "").lower() == "close" or reader.their_state is h11.CLOSED:
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def dialect_problem(case: Case, status: int, headers: dict[str, str], body: bytes) -> str | None:
    """Why an API error is not in its route's JSON dialect (None when it is)."""
    path = case.path.split("?")[0]
    if status < 400 or case.method == "HEAD" or path.startswith("/dashboard") or path == "/":
        return None
    if not headers.get("content-type", "").startswith("application/json"):
        return f"content-type {headers.get('content-type')!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        return "not JSON"
    if path.startswith("/v1/messages"):
        ok = doc.get("type") == "error" and {"type", "message"} <= set(doc.get("error", {}))
    else:
        ok = {"message", "type", "code"} <= set(doc.get("error", {}))
    return None if ok else f"shape {doc}"


@pytest.fixture(scope="module")
def fuzz_gateway(
    sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadServer, Services]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "TOKENOMY_ADMIN_KEY": ADMIN_KEY}
    with throwaway_postgres() as db:
        cfg = make_config(sim.url, tmp, db_url=db, redis_url=require_redis())
        # A garbled head may never end, or promise a longer body: answered 408 in a second.
        server = cfg.server.model_copy(update={"header_timeout_s": 1.0, "body_timeout_s": 1.0})
        svc = build_services(cfg.model_copy(update={"server": server}), env)
        srv = ThreadServer(lambda: app_for(svc)).start()
        yield srv, svc
        srv.stop()


def test_no_input_on_any_route_gets_a_5xx_or_hangs(
    fuzz_gateway: tuple[ThreadServer, Services],
) -> None:
    srv, svc = fuzz_gateway
    org = svc.ledger.create_org("fuzz", "USD")
    svc.ledger.post("topup", org.id, 1_000 * 10**9)
    srv.call(svc.refresh_accounts())
    secret, rec = svc.keys.create("fuzz", org_id=org.id)
    svc.key_cache.put(secret, rec)
    spare = [svc.keys.create(f"spare-{i}")[1].id for i in range(3)]
    world = World(secret, org.id, spare, [])

    seed = int(os.environ.get("TOKENOMY_FUZZ_SEED", secrets.randbits(32)))
    rng = random.Random(seed)
    conn = Conn(srv.port)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for i in range(CASES):
        case = make_case(rng, world)
        if case.raw is not None:
            conn.close()  # a garbled head may leave its connection unusable: its own
        try:
            status, headers, body = conn.exchange(case)
        except (TimeoutError, OSError, h11.RemoteProtocolError) as e:
            conn.close()
            failures.append(f"#{i} {type(e).__name__}: {e}: {case.describe()}")
            continue
        statuses[status] = statuses.get(status, 0) + 1
        problem = dialect_problem(case, status, headers, body)
        if case.raw is not None:
            conn.close()
            problem = None  # a garbled head has no route to take a dialect from
        if status >= 500 or status == 0 or problem:
            failures.append(f"#{i} {status} {problem or body[:300]!r}: {case.describe()}")
    conn.close()
    elapsed = time.monotonic() - started
    summary = f"seed {seed}: {CASES} cases in {elapsed:.1f} s, statuses {sorted(statuses.items())}"
    print(summary, *failures, sep="\n")
    assert not failures, f"{summary}\n{len(failures)} failures:\n" + "\n".join(failures[:15])
    assert sum(statuses.values()) == CASES
