"""The ledger: organisations, projects, budgets, double-entry transactions; usage costs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_USAGE_MONEY: list[sa.Column[object]] = [
    sa.Column("cost_nanos", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("currency", sa.String(3), nullable=True),
    sa.Column("list_cost_nanos", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("list_currency", sa.String(3), nullable=True),
    sa.Column("price_version", sa.String(200), nullable=True),
    sa.Column("fx_rate", sa.String(40), nullable=True),
    sa.Column("held_nanos", sa.BigInteger, nullable=False, server_default="0"),
]


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        for col in _USAGE_MONEY:
            batch.add_column(col)
    op.create_index("ix_usage_events_org_ts", "usage_events", ["org_id", "ts_ms"])
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("credit_limit_nanos", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_orgs_updated_ms", "orgs", ["updated_ms"])
    op.create_table(
        "projects",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_projects_org_id", "projects", ["org_id"])
    op.create_index("ix_projects_updated_ms", "projects", ["updated_ms"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(40), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=True),
        sa.Column("token_limit", sa.BigInteger, nullable=True),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("deleted_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_budgets_updated_ms", "budgets", ["updated_ms"])
    op.create_table(
        "ledger_txns",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("memo", sa.Text, nullable=True),
    )
    op.create_index("ix_ledger_txns_org_ts", "ledger_txns", ["org_id", "ts_ms"])
    op.create_table(
        "ledger_postings",
        sa.Column("txn_id", sa.String(80), primary_key=True),
        sa.Column("account", sa.String(120), primary_key=True),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
    )
    op.create_index("ix_ledger_postings_account", "ledger_postings", ["account"])


def downgrade() -> None:
    for name in ("ledger_postings", "ledger_txns", "budgets", "projects", "orgs"):
        op.drop_table(name)
    op.drop_index("ix_usage_events_org_ts", "usage_events")
    with op.batch_alter_table("usage_events") as batch:
        for col in _USAGE_MONEY:
            batch.drop_column(col.name)
