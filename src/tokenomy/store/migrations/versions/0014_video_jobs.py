"""Video jobs: queued generation jobs and their media.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("seconds", sa.Integer, nullable=False),
        sa.Column("size", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=True),
        sa.Column("completed_ms", sa.BigInteger, nullable=True),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("lease_until", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("upstream_id", sa.String(200), nullable=True),
        sa.Column("held_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("hold_open", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(8), nullable=True),
        sa.Column("render_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_video_jobs_queue", "video_jobs", ["deployment", "status", "created_ms"])
    op.create_index("ix_video_jobs_turns", "video_jobs", ["deployment", "owner", "started_ms"])
    op.create_index("ix_video_jobs_owner", "video_jobs", ["owner", "created_ms"])
    op.create_table(
        "video_outputs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("video_outputs")
    op.drop_index("ix_video_jobs_owner", "video_jobs")
    op.drop_index("ix_video_jobs_turns", "video_jobs")
    op.drop_index("ix_video_jobs_queue", "video_jobs")
    op.drop_table("video_jobs")
