"""Responses API: stored answers, for previous_response_id chains and retrieval; tasks:
their budgets, and the task each usage event belonged to.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("input_items", sa.Text, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
    )
    op.create_index("ix_responses_owner", "responses", ["owner", "created_ms"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("budget_nanos", sa.BigInteger, nullable=True),
        sa.Column("budget_tokens", sa.BigInteger, nullable=True),
    )
    op.add_column("usage_events", sa.Column("task_id", sa.String(64), nullable=True))
    op.create_index("ix_usage_events_task", "usage_events", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_usage_events_task", table_name="usage_events")
    op.drop_column("usage_events", "task_id")
    op.drop_table("tasks")
    op.drop_index("ix_responses_owner", table_name="responses")
    op.drop_table("responses")
