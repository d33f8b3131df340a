"""Responses API: stored answers, for previous_response_id chains and retrieval.

Revision ID: 0011
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
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


def downgrade() -> None:
    op.drop_index("ix_responses_owner", table_name="responses")
    op.drop_table("responses")
