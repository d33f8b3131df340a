"""Writer: dead letters, the records the database refused, kept for an operator.

A record the database refuses (a value too long for its column, a NUL byte) once failed
its whole group commit on every retry, so the writer held every later record in memory.
The writer now splits such a batch and quarantines the refused record here.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "writer_dead_letters",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_index("ix_writer_dead_letters_ts", "writer_dead_letters", ["ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_writer_dead_letters_ts", table_name="writer_dead_letters")
    op.drop_table("writer_dead_letters")
