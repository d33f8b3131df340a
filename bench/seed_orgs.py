"""Seed many tenants for the bench's many-orgs workloads: N orgs with one key each, the
first ``--topup`` of them topped up, in one process.

Orgs and keys are inserted in bulk (the rows `tokenomy orgs create` and `keys create`
write, in one transaction: one at a time, 10,000 took minutes); top-ups go through the
ledger's own ``post`` (double entry), one per org.

    TOKENOMY_DATABASE_URL=... python bench/seed_orgs.py --orgs 10000 --topup 1000 \
        --keys-out keys.txt

Prints nothing but errors; ``--keys-out`` gets one secret a line, in creation order.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from secrets import token_hex, token_urlsafe

from tokenomy.ledger.store import LedgerStore, new_id
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.keys import KEY_PREFIX, hash_key
from tokenomy.store.schema import api_keys, orgs

#: Each seeded org's top-up: far more than a bench run spends.
TOPUP_NANOS = 1_000_000 * 10**9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--orgs", type=int, required=True)
    p.add_argument("--topup", type=int, help="top up this many of them (default: all)")
    p.add_argument("--keys-out", type=Path, required=True)
    args = p.parse_args()
    engine = open_engine(os.environ["TOKENOMY_DATABASE_URL"])
    migrate(engine)
    ts = int(time.time() * 1000)
    org_rows, key_rows, secrets = [], [], []
    for i in range(args.orgs):
        org_id = new_id("org")
        org_rows.append(
            {
                "id": org_id,
                "name": f"bench-org-{i}",
                "currency": "USD",
                "mode": "prepaid",
                "credit_limit_nanos": 0,
                "created_ms": ts,
                "updated_ms": ts,
            }
        )
        secret = KEY_PREFIX + token_urlsafe(24)
        secrets.append(secret)
        key_rows.append(
            {
                "id": "key_" + token_hex(8),
                "key_hash": hash_key(secret),
                "prefix": secret[:10],
                "name": f"bench-{i}",
                "org_id": org_id,
                "project_id": None,
                "allowed_models": None,
                "created_ms": ts,
                "revoked_ms": None,
                "updated_ms": ts,
            }
        )
    with engine.begin() as conn:
        conn.execute(orgs.insert(), org_rows)
        conn.execute(api_keys.insert(), key_rows)
    ledger = LedgerStore(engine)
    n = args.orgs if args.topup is None else min(args.topup, args.orgs)
    for row in org_rows[:n]:
        ledger.post("topup", row["id"], TOPUP_NANOS, txn_id=f"bench-topup-{row['id']}")
    args.keys_out.write_text("\n".join(secrets) + "\n")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
