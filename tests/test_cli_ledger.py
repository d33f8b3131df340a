"""The ledger's CLI commands, run in-process against a temporary SQLite database."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, Gateway
from tokenomy.cli.main import main
from tokenomy.ledger.operations import amount_str
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.db import open_engine
from tokenomy.store.keys import KeyStore


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", url)
    return url


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``tokenomy ARGS``: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_org_topup_balance_statement(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "orgs", "create", "Acme", "--currency", "CNY")
    assert code == 0
    org = out.splitlines()[0]
    assert org.startswith("org_")

    code, out, _ = cli(capsys, "topup", org, "10.00", "--memo", "first")
    assert code == 0 and "balance: 10.00 CNY" in out
    assert cli(capsys, "balance", org)[1].strip() == "10.00 CNY"

    code, out, _ = cli(capsys, "topup", org, "-2.5", "--kind", "adjustment")
    assert code == 0 and "balance: 7.50 CNY" in out

    code, out, _ = cli(capsys, "statement", org, "--csv")
    rows = list(csv.reader(io.StringIO(out)))
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
    assert [(r[2], r[3], r[4], r[6], r[7]) for r in rows[1:]] == [
        ("topup", "10.00", "CNY", "first", "10.00"),
        ("adjustment", "-2.50", "CNY", "", "7.50"),
    ]
    code, out, _ = cli(capsys, "statement", org, "--since", "2999-01-01")
    assert code == 0 and "opening balance 7.50" in out and "closing balance 7.50" in out

    listed = cli(capsys, "orgs", "list")[1]
    assert org in listed and "Acme" in listed and "7.50" in listed
    shown = cli(capsys, "orgs", "show", org)[1]
    assert "mode:         prepaid" in shown and "balance:      7.50 CNY" in shown

    store = LedgerStore(open_engine(db))
    assert store.balance(org) == 7_500_000_000
    assert store.trial_balance() == {"CNY": 0}


def test_bad_input_exits_2_and_changes_nothing(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    org = cli(capsys, "orgs", "create", "Acme")[1].splitlines()[0]
    cli(capsys, "topup", org, "3.00")
    before = cli(capsys, "statement", org, "--csv")[1]
    for amount in ("-1", "abc", "1e3", "0", "0.0000000001", "1000000000.5"):
        code, _, err = cli(capsys, "topup", org, amount)
        assert code == 2 and "amount" in err, (amount, err)
    code, _, err = cli(capsys, "topup", org, "-3.01", "--kind", "adjustment")
    assert code == 2 and "floor" in err
    assert cli(capsys, "topup", "org_missing", "1.00")[0] == 1
    assert cli(capsys, "balance", "org_missing")[0] == 1
    assert cli(capsys, "statement", org, "--csv")[1] == before

    code, _, err = cli(capsys, "orgs", "create", "X", "--currency", "EUR")
    assert code == 2 and "EUR" in err
    code, _, err = cli(
        capsys, "budgets", "set", "--scope", "org", "--id", "org_missing", "--period", "day",
        "--amount", "1",
    )  # fmt: skip
    assert code == 2 and "org_missing" in err
    code, _, err = cli(
        capsys, "budgets", "set", "--scope", "org", "--id", org, "--period", "day",
        "--amount", "1", "--tz", "Mars/Base",
    )  # fmt: skip
    assert code == 2 and "Mars/Base" in err
    code, _, err = cli(capsys, "statement", org, "--since", "last week")
    assert code == 2 and "since" in err
    store = LedgerStore(open_engine(db))
    assert [o.id for o in store.all_orgs()] == [org]
    assert store.all_budgets() == []
    assert store.balance(org) == 3_000_000_000


def test_idempotent_topup(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    org = cli(capsys, "orgs", "create", "Acme")[1].splitlines()[0]
    assert cli(capsys, "topup", org, "5", "--idempotency-key", "inv-7")[0] == 0
    code, out, _ = cli(capsys, "topup", org, "5", "--idempotency-key", "inv-7")
    assert code == 0 and "already posted" in out and "balance: 5.00 USD" in out
    code, _, err = cli(capsys, "topup", org, "6", "--idempotency-key", "inv-7")
    assert code == 2 and "already used" in err
    assert LedgerStore(open_engine(db)).balance(org) == 5_000_000_000


def test_projects_budgets_and_keys(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    org = cli(capsys, "orgs", "create", "Acme")[1].splitlines()[0]
    other = cli(capsys, "orgs", "create", "Other")[1].splitlines()[0]
    code, out, _ = cli(capsys, "projects", "create", org, "web")
    project = out.strip()
    assert code == 0 and project.startswith("proj_")
    assert project in cli(capsys, "projects", "list", "--org", org)[1]
    assert project not in cli(capsys, "projects", "list", "--org", other)[1]

    code, out, _ = cli(
        capsys, "budgets", "set", "--scope", "project", "--id", project, "--period", "month",
        "--amount", "50", "--tokens", "100000", "--tz", "Asia/Shanghai",
    )  # fmt: skip
    budget = out.strip()
    assert code == 0 and budget.startswith("bud_")
    listed = cli(capsys, "budgets", "list")[1]
    assert budget in listed and "50.00" in listed and "100000" in listed
    assert "Asia/Shanghai" in listed
    assert cli(capsys, "budgets", "delete", budget)[0] == 0
    assert budget not in cli(capsys, "budgets", "list")[1]
    assert cli(capsys, "budgets", "delete", budget)[0] == 1

    assert cli(capsys, "keys", "create", "--project", project)[0] == 0
    assert cli(capsys, "keys", "create", "--org", other)[0] == 0
    assert cli(capsys, "keys", "create", "--org", "org_missing")[0] == 2
    assert cli(capsys, "keys", "create", "--org", other, "--project", project)[0] == 2
    keys = KeyStore(open_engine(db)).all()
    assert sorted((k.org_id, k.project_id) for k in keys) == sorted([(org, project), (other, None)])


def test_request_lookup_and_gateway_pickup(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changes made by the CLI reach a running gateway through its refresh loop."""
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", gateway.services.config.database.url)
    org = cli(capsys, "orgs", "create", "From the CLI")[1].splitlines()[0]
    assert cli(capsys, "topup", org, "2.00")[0] == 0
    code, out, _ = cli(capsys, "keys", "create", "--org", org)
    assert code == 0
    secret = out.splitlines()[0]

    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 10
    r = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers)
    while r.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        r = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    (event,) = gateway.wait_events(1, request_id=request_id)

    code, out, _ = cli(capsys, "request", request_id)
    assert code == 0 and request_id in out and "sim-small" in out
    cost = event["cost_nanos"]
    assert cost > 0
    assert f"cost:          {amount_str(cost)} USD" in out
    assert cli(capsys, "request", "req_missing")[0] == 1

    # The gateway's live balance agrees with the CLI's durable one.
    live = httpx.get(
        f"{gateway.url}/admin/orgs/{org}/balance",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert live["balance_nanos"] == live["available_nanos"] == 2_000_000_000 - cost
    assert cli(capsys, "balance", org)[1].strip() == f"{live['balance']} USD"
