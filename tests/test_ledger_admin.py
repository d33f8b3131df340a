"""The ledger's admin API on a running gateway: accounts, money, budgets, statements."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Gateway

NANOS = 10**9
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ) as c:
        yield c


def new_org(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    r = admin.post("/admin/orgs", json={"name": "Acme", **fields})
    assert r.status_code == 201, r.text
    org: dict[str, Any] = r.json()
    return org


def balance(admin: httpx.Client, org_id: str) -> dict[str, Any]:
    r = admin.get(f"/admin/orgs/{org_id}/balance")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def statement_csv(admin: httpx.Client, org_id: str, **params: str) -> list[list[str]]:
    r = admin.get(f"/admin/orgs/{org_id}/statement", params={"format": "csv", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(r.text)))


def org_key(admin: httpx.Client, org_id: str, project_id: str | None = None) -> str:
    body: dict[str, Any] = {"name": "billed", "org_id": org_id}
    if project_id:
        body["project_id"] = project_id
    r = admin.post("/admin/keys", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["org_id"] == org_id
    key: str = r.json()["key"]
    return key


def assert_error(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    return err


def test_admin_key_is_required(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/admin/orgs", json={"name": "x"})
    assert r.status_code == 401
    r = httpx.get(gateway.url + "/admin/orgs", headers={"Authorization": "Bearer tk-wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_create_org_top_up_balance_and_csv_statement(admin: httpx.Client) -> None:
    org = new_org(admin, currency="CNY")
    assert org["currency"] == "CNY" and org["mode"] == "prepaid"
    assert org["id"] in [o["id"] for o in admin.get("/admin/orgs").json()["data"]]

    r = admin.post(f"/admin/orgs/{org['id']}/topups", json={"amount": "10.00", "memo": "wire, #1"})
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["kind"] == "topup" and entry["amount"] == "10.00"
    assert entry["amount_nanos"] == 10 * NANOS and entry["replayed"] is False

    bal = balance(admin, org["id"])
    assert bal["balance"] == "10.00" and bal["balance_nanos"] == 10 * NANOS
    assert bal["available_nanos"] == 10 * NANOS and bal["held_nanos"] == 0
    assert bal["currency"] == "CNY"
    shown = admin.get(f"/admin/orgs/{org['id']}").json()
    assert shown["name"] == "Acme" and shown["balance"]["available"] == "10.00"

    rows = statement_csv(admin, org["id"])
    assert rows[0] == [
        "time",
        "txn_id",
        "kind",
        "amount",
        "currency",
        "request_id",
        "memo",
        "balance",
    ]
    assert len(rows) == 2
    time_, txn, kind, amount, cur, req, memo, running = rows[1]
    assert (txn, kind, amount, cur, req, memo, running) == (
        entry["id"],
        "topup",
        "10.00",
        "CNY",
        "",
        "wire, #1",
        "10.00",
    )
    assert time_.startswith("20") and time_.endswith("Z")

    # Credits, refunds and adjustments carry the running balance on.
    admin.post(f"/admin/orgs/{org['id']}/credits", json={"amount": "0.000000001"})
    admin.post(f"/admin/orgs/{org['id']}/refunds", json={"amount": "2.5"})
    r = admin.post(f"/admin/orgs/{org['id']}/adjustments", json={"amount": "-1.25"})
    assert r.status_code == 201 and r.json()["amount"] == "-1.25"
    rows = statement_csv(admin, org["id"])
    assert [row[2] for row in rows[1:]] == ["topup", "credit", "refund", "adjustment"]
    assert [row[7] for row in rows[1:]] == ["10.00", "10.000000001", "12.500000001", "11.250000001"]
    assert balance(admin, org["id"])["balance"] == "11.250000001"

    js = admin.get(f"/admin/orgs/{org['id']}/statement").json()
    assert js["opening_balance"] == "0.00" and js["closing_balance"] == "11.250000001"
    # A window after everything: no rows, the balance carried in as the opening balance.
    later = admin.get(f"/admin/orgs/{org['id']}/statement", params={"since": "2999-01-01"}).json()
    assert later["data"] == [] and later["opening_balance"] == "11.250000001"
    before = statement_csv(admin, org["id"], until="2000-01-01T00:00:00Z")
    assert len(before) == 1


def _snapshot(admin: httpx.Client, org_id: str) -> tuple[dict[str, Any], str]:
    st = admin.get(f"/admin/orgs/{org_id}/statement", params={"format": "csv"}).text
    return balance(admin, org_id), st


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        ("-5.00", "negative"),
        ("abc", "not a plain decimal"),
        ("1e3", "not a plain decimal"),
        ("NaN", "finite"),
        ("", "empty"),
        ("0", "positive"),
        ("10.0000000001", "decimal places"),
        ("1000000000.01", "maximum"),
        (10.5, "decimal string"),
        (10, "decimal string"),
        (None, "decimal string"),
    ],
)
def test_bad_amounts_are_refused_and_change_nothing(
    admin: httpx.Client, amount: Any, why: str
) -> None:
    org = new_org(admin)
    admin.post(f"/admin/orgs/{org['id']}/topups", json={"amount": "3.00"})
    before = _snapshot(admin, org["id"])
    for kind in ("topups", "credits", "refunds"):
        r = admin.post(f"/admin/orgs/{org['id']}/{kind}", json={"amount": amount})
        err = assert_error(r, 400, "amount")
        assert why in err["message"], err
    assert _snapshot(admin, org["id"]) == before


def test_other_bad_input_is_refused_and_changes_nothing(admin: httpx.Client) -> None:
    org = new_org(admin)
    oid = org["id"]
    admin.post(f"/admin/orgs/{oid}/topups", json={"amount": "3.00"})
    before = _snapshot(admin, oid)
    orgs_before = admin.get("/admin/orgs").json()["data"]
    budgets_before = admin.get("/admin/budgets").json()["data"]

    err = assert_error(
        admin.post("/admin/orgs", json={"name": "x", "currency": "EUR"}), 400, "currency"
    )
    assert "EUR" in err["message"]
    assert_error(admin.post("/admin/orgs", json={"name": "x", "mode": "free"}), 400, "mode")
    assert_error(admin.post("/admin/orgs", json={"name": ""}), 400, "name")
    assert_error(
        admin.post("/admin/orgs", json={"name": "x", "mode": "postpaid", "credit_limit": "-1"}),
        400,
        "credit_limit",
    )
    assert_error(
        admin.post("/admin/orgs", json={"name": "x", "credit_limit": "5"}), 400, "credit_limit"
    )
    assert admin.get("/admin/orgs").json()["data"] == orgs_before

    # An adjustment may be negative, but never below the prepaid floor of zero.
    err = assert_error(
        admin.post(f"/admin/orgs/{oid}/adjustments", json={"amount": "-3.01"}), 400, "amount"
    )
    assert "floor" in err["message"]
    assert_error(
        admin.post(f"/admin/orgs/{oid}/topups", json={"amount": "1", "memo": 5}), 400, "memo"
    )
    assert_error(
        admin.post(f"/admin/orgs/{oid}/topups", json={"amount": "1", "idempotency_key": "a b"}),
        400,
        "idempotency_key",
    )
    # Each entry is bounded, and so is the balance they add up to.
    big = {"amount": "999999999.00"}
    assert_error(admin.post(f"/admin/orgs/{oid}/topups", json=big), 400, "amount")

    bad_budgets: list[tuple[dict[str, Any], str]] = [
        ({"scope": "org", "scope_id": "org_missing", "period": "day", "amount": "1"}, "scope_id"),
        ({"scope": "project", "scope_id": "nope", "period": "day", "amount": "1"}, "scope_id"),
        ({"scope": "key", "scope_id": "nope", "period": "day", "token_limit": 5}, "scope_id"),
        (
            {"scope": "org", "scope_id": oid, "period": "day", "amount": "1", "tz": "Mars/Base"},
            "tz",
        ),
        ({"scope": "org", "scope_id": oid, "period": "day", "amount": "-1"}, "amount"),
        ({"scope": "org", "scope_id": oid, "period": "day", "amount": "x"}, "amount"),
        ({"scope": "org", "scope_id": oid, "period": "day", "token_limit": -1}, "token_limit"),
        ({"scope": "org", "scope_id": oid, "period": "day", "token_limit": 10**19}, "token_limit"),
        ({"scope": "org", "scope_id": oid, "period": "day", "token_limit": "5"}, "token_limit"),
        ({"scope": "org", "scope_id": oid, "period": "fortnight", "amount": "1"}, "period"),
        ({"scope": "team", "scope_id": oid, "period": "day", "amount": "1"}, "scope"),
        ({"scope": "org", "scope_id": oid, "period": "day"}, "amount"),
    ]
    for body, param in bad_budgets:
        assert_error(admin.post("/admin/budgets", json=body), 400, param)
    assert admin.get("/admin/budgets").json()["data"] == budgets_before

    for q in ({"since": "yesterday"}, {"until": "2025-13-01"}, {"format": "xml"}):
        assert admin.get(f"/admin/orgs/{oid}/statement", params=q).status_code == 400
    assert _snapshot(admin, oid) == before


def test_missing_org_is_404(admin: httpx.Client) -> None:
    for method, path, body in [
        ("GET", "/admin/orgs/org_missing", None),
        ("GET", "/admin/orgs/org_missing/balance", None),
        ("GET", "/admin/orgs/org_missing/statement", None),
        ("GET", "/admin/orgs/org_missing/projects", None),
        ("POST", "/admin/orgs/org_missing/projects", {"name": "p"}),
        ("POST", "/admin/orgs/org_missing/topups", {"amount": "1.00"}),
    ]:
        r = admin.request(method, path, json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "org_not_found"
    assert admin.get("/admin/requests/req_missing").status_code == 404
    assert admin.delete("/admin/budgets/bud_missing").status_code == 404


def test_idempotent_top_up_posts_once(admin: httpx.Client) -> None:
    org = new_org(admin)
    path = f"/admin/orgs/{org['id']}/topups"
    first = admin.post(path, json={"amount": "5.00", "idempotency_key": "inv-2025-001"})
    again = admin.post(path, json={"amount": "5.00"}, headers={"Idempotency-Key": "inv-2025-001"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["replayed"] is True and again.json()["id"] == first.json()["id"]
    assert balance(admin, org["id"])["balance"] == "5.00"
    assert len(statement_csv(admin, org["id"])) == 2
    # The same key with another amount is a client bug, not a second top-up.
    r = admin.post(path, json={"amount": "6.00", "idempotency_key": "inv-2025-001"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_reused"
    # Keys are per organisation.
    other = new_org(admin)
    r = admin.post(
        f"/admin/orgs/{other['id']}/topups",
        json={"amount": "5.00", "idempotency_key": "inv-2025-001"},
    )
    assert r.status_code == 201
    assert balance(admin, org["id"])["balance"] == "5.00"
    assert balance(admin, other["id"])["balance"] == "5.00"


def test_projects_and_keys_under_an_org(admin: httpx.Client) -> None:
    org, other = new_org(admin), new_org(admin)
    r = admin.post(f"/admin/orgs/{org['id']}/projects", json={"name": "web"})
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["org_id"] == org["id"]
    listed = admin.get(f"/admin/orgs/{org['id']}/projects").json()["data"]
    assert [p["id"] for p in listed] == [project["id"]]
    assert admin.get(f"/admin/orgs/{other['id']}/projects").json()["data"] == []

    r = admin.post("/admin/keys", json={"project_id": project["id"]})
    assert r.status_code == 201 and r.json()["org_id"] == org["id"]
    assert r.json()["project_id"] == project["id"]
    keys_before = admin.get("/admin/keys").json()["data"]
    assert_error(admin.post("/admin/keys", json={"org_id": "org_missing"}), 400, "org_id")
    assert_error(admin.post("/admin/keys", json={"project_id": "proj_missing"}), 400, "project_id")
    assert_error(
        admin.post("/admin/keys", json={"org_id": other["id"], "project_id": project["id"]}),
        400,
        "project_id",
    )
    assert_error(admin.post("/admin/keys", json={"org_id": 7}), 400, "org_id")
    assert admin.get("/admin/keys").json()["data"] == keys_before


def test_budgets_create_list_delete_and_enforce(admin: httpx.Client, gateway: Gateway) -> None:
    org = new_org(admin)
    admin.post(f"/admin/orgs/{org['id']}/topups", json={"amount": "5.00"})
    key = org_key(admin, org["id"])
    key_id = next(
        k["id"] for k in admin.get("/admin/keys").json()["data"] if k["org_id"] == org["id"]
    )
    body = {
        "scope": "key",
        "scope_id": key_id,
        "period": "month",
        "token_limit": 3,
        "tz": "Asia/Shanghai",
    }
    r = admin.post("/admin/budgets", json=body)
    assert r.status_code == 201, r.text
    bud = r.json()
    assert (bud["scope"], bud["period"], bud["token_limit"], bud["tz"]) == (
        "key",
        "month",
        3,
        "Asia/Shanghai",
    )
    listed = admin.get("/admin/budgets", params={"scope_id": key_id}).json()["data"]
    assert [b["id"] for b in listed] == [bud["id"]]

    chat = gateway.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(chat, json=CHAT, headers=headers, timeout=10)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota"
    assert "budget" in r.json()["error"]["message"]

    assert admin.delete(f"/admin/budgets/{bud['id']}").status_code == 200
    assert admin.get("/admin/budgets", params={"scope_id": key_id}).json()["data"] == []
    assert admin.delete(f"/admin/budgets/{bud['id']}").status_code == 404
    r = httpx.post(chat, json=CHAT, headers=headers, timeout=10)
    assert r.status_code == 200, r.text

    money = {"scope": "org", "scope_id": org["id"], "period": "day", "amount": "12.345"}
    r = admin.post("/admin/budgets", json=money)
    assert r.status_code == 201 and r.json()["amount"] == "12.345"
    assert r.json()["amount_nanos"] == 12_345_000_000
    admin.delete(f"/admin/budgets/{r.json()['id']}")


def test_org_key_is_billed_exactly_what_its_usage_costs(
    admin: httpx.Client, gateway: Gateway
) -> None:
    org = new_org(admin)
    admin.post(f"/admin/orgs/{org['id']}/topups", json={"amount": "10.00"})
    key = org_key(admin, org["id"])
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    (event,) = gateway.wait_events(1, request_id=request_id)
    cost = event["cost_nanos"]
    assert cost > 0 and event["org_id"] == org["id"] and event["currency"] == "USD"
    # The header and the body's usage carry the same cost, in units, exactly.
    header = r.headers["x-tokenomy-cost"]
    whole, _, frac = header.partition(".")
    assert int(whole) * NANOS + int(frac.ljust(9, "0")) == cost
    assert r.json()["usage"]["cost"] is not None

    bal = balance(admin, org["id"])
    assert bal["balance_nanos"] == 10 * NANOS - cost
    assert bal["available_nanos"] == 10 * NANOS - cost and bal["held_nanos"] == 0

    rows = statement_csv(admin, org["id"])
    usage = [row for row in rows[1:] if row[2] == "usage"]
    assert len(usage) == 1 and usage[0][5] == request_id
    assert rows[-1][7] == bal["balance"]

    r = admin.get(f"/admin/requests/{request_id}")
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["cost_nanos"] == cost and rec["currency"] == "USD"
    assert rec["status"] == "ok" and rec["model"] == "sim-small"
    assert rec["deployment"] and rec["price_version"]
    assert rec["tokens"]["input"] == event["input_tokens"] > 0
    assert rec["tokens"]["output"] == event["output_tokens"] > 0
    assert rec["latency_ms"] >= 0 and rec["org_id"] == org["id"]


def test_prepaid_org_with_no_money_gets_402(admin: httpx.Client, gateway: Gateway) -> None:
    org = new_org(admin)
    key = org_key(admin, org["id"])
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 402, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
    assert org["id"] in err["message"]
    assert balance(admin, org["id"])["balance_nanos"] == 0


def test_postpaid_org_spends_on_credit(admin: httpx.Client, gateway: Gateway) -> None:
    org = new_org(admin, mode="postpaid", credit_limit="1.00")
    assert org["credit_limit"] == "1.00"
    assert balance(admin, org["id"])["available"] == "1.00"
    key = org_key(admin, org["id"])
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (event,) = gateway.wait_events(1, request_id=r.headers["x-request-id"])
    assert balance(admin, org["id"])["balance_nanos"] == -event["cost_nanos"] < 0


def test_negative_adjustment_keeps_open_holds_covered(
    gateway: Gateway, admin: httpx.Client
) -> None:
    import time

    from tokenomy.ledger.accounts import OrgMeter
    from tokenomy.ledger.live import Hold

    org_id = gateway.new_org(10 * 10**9)
    org = gateway.services.ledger.org(org_id)
    hold = Hold("req_adjust_test", OrgMeter(org), (), 6 * 10**9, 1, time.time() + 60)
    gateway.server.call(gateway.services.live.hold(hold))
    path = f"/admin/orgs/{org_id}/adjustments"
    r = admin.post(path, json={"amount": "-5.00"})
    assert r.status_code == 400 and "open holds" in r.json()["error"]["message"]
    assert gateway.services.ledger.balance(org_id) == 10 * 10**9
    assert admin.post(path, json={"amount": "-4.00"}).status_code == 201
    gateway.server.call(gateway.services.live.settle(hold, 0, 0))
    assert gateway.services.ledger.balance(org_id) == 6 * 10**9
