"""Analytics: usage roll-ups by minute, hour and day, and the queue of events to roll up.

Events recorded before this revision are queued too, so they are rolled up on the next
run of the roll-up job.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DIMENSIONS = [
    ("org_id", 40),
    ("project_id", 40),
    ("key_id", 40),
    ("model", 200),
    ("vendor", 64),
    ("country", 40),
    ("region", 64),
    ("status", 16),
    ("currency", 3),
]
_MEASURES = [
    "requests",
    "errors",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency_ms_sum",
    "ttft_count",
    "ttft_ms_sum",
]
_HISTOGRAM_BUCKETS = 34


def upgrade() -> None:
    cols: list[sa.Column[object]] = [
        sa.Column("period", sa.String(1), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger, nullable=False),
    ]
    cols += [sa.Column(n, sa.String(size), nullable=False) for n, size in _DIMENSIONS]
    cols += [sa.Column(n, sa.BigInteger, nullable=False) for n in _MEASURES]
    for prefix in ("lat", "ttft"):
        cols += [
            sa.Column(f"{prefix}_{i:02d}", sa.BigInteger, nullable=False)
            for i in range(_HISTOGRAM_BUCKETS)
        ]
    op.create_table("usage_rollups", *cols)
    op.create_index("ix_usage_rollups_period_bucket", "usage_rollups", ["period", "bucket_ms"])
    op.create_index("ix_usage_rollups_key", "usage_rollups", ["key_id", "period", "bucket_ms"])
    op.create_table(
        "analytics_pending",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_analytics_pending_bucket", "analytics_pending", ["bucket_ms"])
    op.create_table(
        "analytics_state",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO analytics_pending (request_id, bucket_ms) "
        "SELECT request_id, ts_ms - (ts_ms % 60000) FROM usage_events"
    )


def downgrade() -> None:
    op.drop_table("analytics_state")
    op.drop_index("ix_analytics_pending_bucket", table_name="analytics_pending")
    op.drop_table("analytics_pending")
    op.drop_index("ix_usage_rollups_key", table_name="usage_rollups")
    op.drop_index("ix_usage_rollups_period_bucket", table_name="usage_rollups")
    op.drop_table("usage_rollups")
