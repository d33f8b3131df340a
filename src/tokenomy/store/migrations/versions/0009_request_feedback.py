"""Feedback: a client's score (0–1) for one of its requests, beside its usage record.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_feedback",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(40), nullable=True),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("prompt", sa.Text, nullable=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_request_feedback_org_ts", "request_feedback", ["org_id", "ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_request_feedback_org_ts", table_name="request_feedback")
    op.drop_table("request_feedback")
