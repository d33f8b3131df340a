"""The usage events' task and end-user indexes hold only the rows that name one.

Most calls name neither a task nor an end user, yet every insert added a NULL entry to
both indexes: two of the dozen index entries a call's records cost the database. Every
query through them asks for one task or one end user (``= value``), which implies the
``IS NOT NULL`` of a partial index, so they serve those queries as before.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TASK = sa.text("task_id IS NOT NULL")
_USER = sa.text("end_user IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_usage_events_task", table_name="usage_events")
    op.drop_index("ix_usage_events_org_user_ts", table_name="usage_events")
    op.create_index(
        "ix_usage_events_task",
        "usage_events",
        ["task_id"],
        postgresql_where=_TASK,
        sqlite_where=_TASK,
    )
    op.create_index(
        "ix_usage_events_org_user_ts",
        "usage_events",
        ["org_id", "end_user", "ts_ms"],
        postgresql_where=_USER,
        sqlite_where=_USER,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_task", table_name="usage_events")
    op.drop_index("ix_usage_events_org_user_ts", table_name="usage_events")
    op.create_index("ix_usage_events_task", "usage_events", ["task_id"])
    op.create_index("ix_usage_events_org_user_ts", "usage_events", ["org_id", "end_user", "ts_ms"])
