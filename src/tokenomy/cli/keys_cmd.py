"""``tokenomy keys create|list|revoke`` and ``tokenomy config check``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tokenomy.billing.catalog import PriceBook
from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.config import ConfigError, load_config
from tokenomy.gateway.price_check import check_served_prices
from tokenomy.gateway.registry import build_registry
from tokenomy.ledger.store import LedgerStore, NotFoundError
from tokenomy.services import key_store


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    c = ksub.add_parser("create", help="create a key and print it (shown once)")
    add_config_arg(c)
    c.add_argument("--name", default="", help="a label for the key")
    c.add_argument("--models", help="comma-separated models the key may use (default: all)")
    c.add_argument("--org", help="the organisation the key bills to")
    c.add_argument("--project", help="the project the key belongs to (implies its org)")
    c.set_defaults(func=create)
    ls = ksub.add_parser("list", help="list keys (never their secrets)")
    add_config_arg(ls)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.set_defaults(func=list_keys)
    r = ksub.add_parser("revoke", help="revoke a key by id")
    add_config_arg(r)
    r.add_argument("key_id")
    r.set_defaults(func=revoke)

    cfg = sub.add_parser("config", help="configuration tools")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = csub.add_parser("check", help="validate a config file and list what it serves")
    chk.add_argument("file", nargs="?", help="YAML config (default: the packaged default)")
    chk.set_defaults(func=check)


def create(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if models is not None:
        reg = build_registry(cfg)
        unknown = [m for m in models if reg.get(m) is None]
        if unknown:
            fail(f"unknown models: {', '.join(unknown)}")
    engine = database(cfg)
    org_id, project_id = _owner(LedgerStore(engine), args.org, args.project)
    secret, rec = key_store(engine, cfg).create(
        args.name, allowed_models=models, org_id=org_id, project_id=project_id
    )
    print(secret)
    print(
        f"id: {rec.id}  name: {rec.name or '-'}  models: {', '.join(models) if models else 'all'}"
    )
    return 0


def _owner(
    store: LedgerStore, org: str | None, project: str | None
) -> tuple[str | None, str | None]:
    """The org and project a new key bills to; a project implies its org."""
    try:
        if project is not None:
            owner = store.project(project).org_id
            if org is not None and org != owner:
                fail(f"project {project} belongs to {owner}, not {org}")
            org = owner
        if org is not None:
            store.org(org)
    except NotFoundError as e:
        fail(str(e))
    return org, project


def list_keys(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    keys = key_store(database(cfg), cfg).all(include_revoked=args.all)
    print(f"{'id':<22} {'prefix':<12} {'name':<20} {'models':<30} {'created':<20} revoked")
    for k in keys:
        models = ",".join(sorted(k.allowed_models)) if k.allowed_models is not None else "all"
        revoked = _when(k.revoked_ms) if k.revoked_ms else "-"
        created = _when(k.created_ms)
        name = k.name[:20]
        print(f"{k.id:<22} {k.prefix:<12} {name:<20} {models[:30]:<30} {created:<20} {revoked}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if not key_store(database(cfg), cfg).revoke(args.key_id):
        fail(f"no active key with id '{args.key_id}'", code=1)
    print(f"revoked {args.key_id}")
    return 0


def check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        fail(str(e), code=1)
    reg = build_registry(cfg)
    try:
        check_served_prices(cfg, reg, PriceBook.load(cfg.prices))
    except ConfigError as e:
        fail(str(e), code=1)
    print(f"{cfg.source}: OK — {len(cfg.models)} models configured, {len(reg.routes)} served")
    for r in reg.routes:
        print(f"  {r.name}: " + ", ".join(d.id for d in r.deployments))
    return 0


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
