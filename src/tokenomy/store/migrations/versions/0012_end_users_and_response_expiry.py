"""End users: the organisation's end user on each usage event, and budgets on them; an
index for the purge of stored responses past their retention.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("end_user", sa.String(128), nullable=True))
    op.create_index("ix_usage_events_org_user_ts", "usage_events", ["org_id", "end_user", "ts_ms"])
    op.create_index("ix_responses_created", "responses", ["created_ms"])
    # An end user's budget is on "<org id>:<user>" (SQLite copies the table to change it).
    with op.batch_alter_table("budgets") as b:
        b.alter_column("scope_id", type_=sa.String(200), existing_type=sa.String(40))


def downgrade() -> None:
    op.drop_index("ix_responses_created", "responses")
    with op.batch_alter_table("budgets") as b:
        b.alter_column("scope_id", type_=sa.String(40), existing_type=sa.String(200))
    op.drop_index("ix_usage_events_org_user_ts", "usage_events")
    op.drop_column("usage_events", "end_user")
