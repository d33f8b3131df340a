"""Analytics: each key's and each org's daily roll-ups, and an index for one org's rows.

Rankings of orgs and keys and the milestones read these small periods instead of the
full daily rows. Existing daily rows are summed into them here, so no event is rolled up
again.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_DIMENSIONS = [
    "org_id",
    "project_id",
    "key_id",
    "model",
    "vendor",
    "country",
    "region",
    "status",
    "currency",
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
#: New period: (built from, dimensions kept); the others are stored as "".
_PERIODS = [
    ("K", "d", ["org_id", "project_id", "key_id", "currency"]),
    ("O", "K", ["org_id", "currency"]),
]


def _sum_into(period: str, child: str, keep: list[str]) -> str:
    sums = _MEASURES + [f"{p}_{i:02d}" for p in ("lat", "ttft") for i in range(_HISTOGRAM_BUCKETS)]
    cols = ["period", "bucket_ms", *_DIMENSIONS, *sums]
    dims = [d if d in keep else f"'' AS {d}" for d in _DIMENSIONS]
    return (
        f"INSERT INTO usage_rollups ({', '.join(cols)}) "
        f"SELECT '{period}', bucket_ms, {', '.join(dims)}, "
        f"{', '.join(f'SUM({c})' for c in sums)} FROM usage_rollups "
        f"WHERE period = '{child}' GROUP BY bucket_ms, {', '.join(keep)}"
    )


def upgrade() -> None:
    op.create_index("ix_usage_rollups_org", "usage_rollups", ["org_id", "period", "bucket_ms"])
    for period, child, keep in _PERIODS:
        op.execute(_sum_into(period, child, keep))


def downgrade() -> None:
    op.execute("DELETE FROM usage_rollups WHERE period IN ('K', 'O')")
    op.drop_index("ix_usage_rollups_org", table_name="usage_rollups")
