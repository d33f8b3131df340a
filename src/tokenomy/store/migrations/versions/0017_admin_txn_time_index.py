"""Ledger: the admin transactions indexed by time, so that the gateway's refresh of the
orgs' admin totals reads only the orgs that had one lately, not every org every second.

Revision ID: 0017
Revises: 0016
"""

from alembic import op
from sqlalchemy import text

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_ADMIN = "kind IN ('topup', 'credit', 'refund', 'adjustment')"


def upgrade() -> None:
    op.create_index(
        "ix_ledger_txns_admin_ts",
        "ledger_txns",
        ["ts_ms"],
        sqlite_where=text(_ADMIN),
        postgresql_where=text(_ADMIN),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_txns_admin_ts", table_name="ledger_txns")
