"""Batch plans and native vendor batches: when and where a batch is planned to run, and
the vendor batch its lines were handed to.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.add_column(sa.Column("plan", sa.Text, nullable=True))
        t.add_column(sa.Column("vendor_batch", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.drop_column("vendor_batch")
        t.drop_column("plan")
