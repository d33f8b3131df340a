"""Usage events: the prompt-cache writes made to a one-hour cache (part of
cache_write_tokens), which Anthropic bills at 2x input rather than a five-minute write's
1.25x, so a record re-prices exactly.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "usage_events",
        sa.Column("cache_write_1h_tokens", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("usage_events", "cache_write_1h_tokens")
