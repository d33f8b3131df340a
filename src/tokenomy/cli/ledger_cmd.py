"""``tokenomy orgs|projects|topup|balance|budgets|statement|request``: the ledger by hand.

These commands write the database directly; a running gateway picks the changes up
within a second through its refresh loop. Amounts are decimal strings ("12.50"), parsed
and shown exactly as the admin API does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.core.errors import GatewayError
from tokenomy.ledger.accounts import Mode, Scope, user_scope_id
from tokenomy.ledger.operations import (
    KIND_PATHS,
    amount_field,
    amount_str,
    choice_field,
    currency_field,
    idempotency_field,
    iso_ms,
    load_statement,
    memo_field,
    post_entry,
    request_json,
    text_field,
    time_field,
    token_limit_field,
    tz_field,
)
from tokenomy.ledger.periods import Period
from tokenomy.ledger.store import LedgerError, LedgerStore, NotFoundError


def register(sub: Any) -> None:
    orgs = sub.add_parser("orgs", help="create, list and show organisations")
    osub = orgs.add_subparsers(dest="orgs_command", required=True, metavar="ACTION")
    c = _cmd(osub, "create", "create an organisation", org_create)
    c.add_argument("name")
    c.add_argument("--currency", default="USD", help="USD or CNY (default USD)")
    c.add_argument("--mode", default="prepaid", choices=[m.value for m in Mode])
    c.add_argument("--credit-limit", default="0", help="postpaid credit line, e.g. 500.00")
    _cmd(osub, "list", "list organisations", org_list)
    s = _cmd(osub, "show", "show an organisation and its balance", org_show)
    s.add_argument("org", help="the organisation's id or name")

    projects = sub.add_parser("projects", help="create and list projects")
    psub = projects.add_subparsers(dest="projects_command", required=True, metavar="ACTION")
    pc = _cmd(psub, "create", "create a project under an organisation", project_create)
    pc.add_argument("org", help="the organisation's id or name")
    pc.add_argument("name")
    pl = _cmd(psub, "list", "list projects", project_list)
    pl.add_argument("--org", help="only this organisation's projects")

    t = _cmd(sub, "topup", "add money to an organisation (or credit, refund, adjust)", topup)
    t.add_argument("org", help="the organisation's id or name")
    t.add_argument("amount", help="decimal amount, e.g. 10.00 (adjustments may be negative)")
    t.add_argument("--kind", default="topup", choices=list(KIND_PATHS))
    t.add_argument("--memo")
    t.add_argument("--idempotency-key", help="post at most once per key")

    b = _cmd(sub, "balance", "an organisation's balance", balance)
    b.add_argument("org", help="the organisation's id or name")

    budgets = sub.add_parser("budgets", help="set, list and delete budgets")
    bsub = budgets.add_subparsers(dest="budgets_command", required=True, metavar="ACTION")
    bs = _cmd(bsub, "set", "add a budget to an org, project, key or end user", budget_set)
    bs.add_argument("--scope", required=True, choices=[x.value for x in Scope])
    bs.add_argument(
        "--id", dest="scope_id", required=True, help="the org, project or key id, or the end user"
    )
    bs.add_argument("--org", help="the end user's organisation (with --scope user)")
    bs.add_argument("--period", required=True, choices=[x.value for x in Period])
    bs.add_argument("--amount", help="money per period, e.g. 50.00")
    bs.add_argument("--tokens", type=int, help="tokens per period")
    bs.add_argument("--tz", default="UTC", help="IANA time zone of the period (default UTC)")
    _cmd(bsub, "list", "list budgets", budget_list)
    bd = _cmd(bsub, "delete", "delete a budget", budget_delete)
    bd.add_argument("budget_id")

    st = _cmd(sub, "statement", "an organisation's ledger entries", statement)
    st.add_argument("org", help="the organisation's id or name")
    st.add_argument("--since", help="ISO date or time (UTC unless given), inclusive")
    st.add_argument("--until", help="ISO date or time (UTC unless given), exclusive")
    st.add_argument("--csv", action="store_true", help="CSV instead of a table")

    r = _cmd(sub, "request", "look up one request's usage and cost", request)
    r.add_argument("request_id")


def _cmd(sub: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    add_config_arg(p)
    p.set_defaults(func=_guarded(func))
    return p


def _guarded(func: Any) -> Any:
    """Turn refusals into one-line messages: 2 for bad input, 1 for something missing."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except NotFoundError as e:
            fail(str(e), code=1)
        except LedgerError as e:
            fail(str(e))
        except GatewayError as e:
            fail(e.message, code=1 if e.status == 404 else 2)

    return run


def _store(args: argparse.Namespace) -> LedgerStore:
    return LedgerStore(database(config_from(args)))


def _org_id(store: LedgerStore, id_or_name: str) -> str:
    """The id of the organisation a command names by id or by (unique) name."""
    return store.find_org(id_or_name).id


def org_create(args: argparse.Namespace) -> int:
    name = text_field(args.name, "name")
    currency = currency_field(args.currency)
    credit = amount_field(args.credit_limit, "credit_limit")
    org = _store(args).create_org(name, currency, mode=args.mode, credit_limit_nanos=credit)
    print(org.id)
    print(f"name: {org.name}  currency: {org.currency.value}  mode: {org.mode.value}")
    return 0


def org_list(args: argparse.Namespace) -> int:
    store = _store(args)
    print(f"{'id':<22} {'name':<24} {'cur':<4} {'mode':<9} {'balance':>22}")
    for o in store.all_orgs():
        bal = amount_str(store.balance(o.id))
        print(f"{o.id:<22} {o.name[:24]:<24} {o.currency.value:<4} {o.mode.value:<9} {bal:>22}")
    return 0


def org_show(args: argparse.Namespace) -> int:
    store = _store(args)
    org = store.find_org(args.org)
    print(f"id:           {org.id}")
    print(f"name:         {org.name}")
    print(f"currency:     {org.currency.value}")
    print(f"mode:         {org.mode.value}")
    if org.mode is Mode.POSTPAID:
        print(f"credit limit: {amount_str(org.credit_limit_nanos)}")
    print(f"balance:      {amount_str(store.balance(org.id))} {org.currency.value}")
    print(f"projects:     {len(store.all_projects(org.id))}")
    return 0


def project_create(args: argparse.Namespace) -> int:
    store = _store(args)
    p = store.create_project(_org_id(store, args.org), text_field(args.name, "name"))
    print(p.id)
    return 0


def project_list(args: argparse.Namespace) -> int:
    print(f"{'id':<22} {'org':<22} name")
    for p in _store(args).all_projects(args.org):
        print(f"{p.id:<22} {p.org_id:<22} {p.name}")
    return 0


def topup(args: argparse.Namespace) -> int:
    store = _store(args)
    amount = amount_field(args.amount, "amount", allow_negative=args.kind == "adjustment")
    memo = memo_field(args.memo)
    key = idempotency_field(args.idempotency_key, "idempotency-key")
    org_id = _org_id(store, args.org)
    entry, replay = post_entry(store, args.kind, org_id, amount, memo, key)
    note = " (already posted with this idempotency key)" if replay else ""
    print(f"{entry.txn_id} {entry.kind} {amount_str(entry.amount_nanos)} {entry.currency}{note}")
    print(f"balance: {amount_str(store.balance(org_id))} {entry.currency}")
    return 0


def balance(args: argparse.Namespace) -> int:
    store = _store(args)
    org = store.find_org(args.org)
    print(f"{amount_str(store.balance(org.id))} {org.currency.value}")
    return 0


def budget_set(args: argparse.Namespace) -> int:
    amount = None if args.amount is None else amount_field(args.amount, "amount")
    tokens = token_limit_field(args.tokens, "tokens")
    if amount is None and tokens is None:
        fail("a budget needs --amount, --tokens, or both")
    tz = tz_field(args.tz, "tz")
    scope = choice_field(args.scope, "scope", [x.value for x in Scope])
    scope_id = args.scope_id
    if scope == Scope.USER:
        if args.org is None:
            fail("an end user's budget needs --org (the user's organisation id or name)")
        scope_id = user_scope_id(_store(args).find_org(args.org).id, scope_id)
    elif args.org is not None:
        fail("--org is for an end user's budget (--scope user)")
    b = _store(args).set_budget(
        scope, scope_id, args.period, amount_nanos=amount, token_limit=tokens, tz=tz
    )
    print(b.id)
    return 0


def budget_list(args: argparse.Namespace) -> int:
    print(
        f"{'id':<22} {'scope':<8} {'scope id':<22} {'period':<9} {'amount':>16} {'tokens':>12} tz"
    )
    for b in _store(args).all_budgets():
        amount = amount_str(b.amount_nanos) if b.amount_nanos is not None else "-"
        tokens = str(b.token_limit) if b.token_limit is not None else "-"
        print(
            f"{b.id:<22} {b.scope.value:<8} {b.scope_id:<22} {b.period.value:<9} "
            f"{amount:>16} {tokens:>12} {b.tz}"
        )
    return 0


def budget_delete(args: argparse.Namespace) -> int:
    if not _store(args).delete_budget(args.budget_id):
        fail(f"no budget with id '{args.budget_id}'", code=1)
    print(f"deleted {args.budget_id}")
    return 0


def statement(args: argparse.Namespace) -> int:
    since = time_field(args.since, "since")
    until = time_field(args.until, "until")
    store = _store(args)
    st = load_statement(store, _org_id(store, args.org), since, until)
    if args.csv:
        sys.stdout.write(st.to_csv())
        return 0
    cur = st.org.currency.value
    print(f"{st.org.id} ({st.org.name}), {cur}")
    print(f"opening balance {amount_str(st.opening_nanos)}")
    print(f"{'time':<25} {'kind':<11} {'amount':>18} {'balance':>18}  txn / request / memo")
    for e, bal in st.rows():
        ref = " ".join(x for x in (e.txn_id, e.request_id, e.memo) if x)
        print(
            f"{iso_ms(e.ts_ms):<25} {e.kind:<11} {amount_str(e.amount_nanos):>18} "
            f"{amount_str(bal):>18}  {ref}"
        )
    print(f"closing balance {amount_str(st.closing_nanos)}")
    return 0


def request(args: argparse.Namespace) -> int:
    row = _store(args).request(args.request_id)
    if row is None:
        fail(f"no request '{args.request_id}'", code=1)
    r = request_json(row)
    t = r["tokens"]
    print(f"request:       {r['id']}  ({r['time']})")
    print(f"model:         {r['model']}  deployment: {r['deployment'] or '-'}")
    print(f"status:        {r['status']} ({r['http_status']})  latency: {r['latency_ms']} ms")
    print(
        f"tokens:        input {t['input']} (cached {t['cached']}, cache write "
        f"{t['cache_write']}), output {t['output']} (reasoning {t['reasoning']})"
    )
    print(f"price version: {r['price_version'] or '-'}  tier: {r['price_tier'] or '-'}")
    print(f"cost:          {r['cost']} {r['currency'] or ''}".rstrip())
    print(f"list cost:     {r['list_cost']} {r['list_currency'] or ''}".rstrip())
    print(f"fx rate:       {r['fx_rate'] or '-'}")
    print(f"org / key:     {r['org_id'] or '-'} / {r['key_id'] or '-'}")
    return 0
