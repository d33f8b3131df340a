"""Usage events: the price tier each request was billed at (standard or batch).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("price_tier", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_events", "price_tier")
