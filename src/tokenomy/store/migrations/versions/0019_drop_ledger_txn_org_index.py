"""Ledger: drop the transactions' (org, time) index, which no query reads.

A usage transaction is written for every billed request. An index ordered by org takes
each one in a different place: with 1,000 tenants in rotation every flush of the usage
writer dirtied a page of it per request it held (on SQLite a quarter of the writer's
extra cost over one tenant). An org's entries are read through its account's postings
(``ix_ledger_postings_account``), its admin transactions through the partial indexes of
0016 and 0017, so nothing read this one.

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ledger_txns_org_ts", "ledger_txns")


def downgrade() -> None:
    op.create_index("ix_ledger_txns_org_ts", "ledger_txns", ["org_id", "ts_ms"])
