"""Ledger: a partial index of the admin transactions (top-ups, credits, refunds, adjustments).

Every gateway re-reads each org's admin total every second. Without this index that read
scanned every ledger transaction ever written, one per billed request, so its cost grew
with the history until it dominated the database.

Revision ID: 0006
Revises: 0005
"""

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ADMIN = "kind IN ('topup', 'credit', 'refund', 'adjustment')"


def upgrade() -> None:
    op.create_index(
        "ix_ledger_txns_admin",
        "ledger_txns",
        ["org_id"],
        sqlite_where=text(_ADMIN),
        postgresql_where=text(_ADMIN),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_txns_admin", table_name="ledger_txns")
