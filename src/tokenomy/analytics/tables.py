"""Analytics tables (migrations 0003 to 0005): rollup buckets and the queue of events to
roll up.

``usage_rollups`` holds one row per (period, bucket, org, project, key, model, vendor,
country, region, status, currency) with additive measures only, so any coarser view is
a SUM over rows. ``analytics_pending`` marks the usage events not yet rolled up,
inserted by a trigger on ``usage_events`` (only for events actually inserted, so a replay
leaves none): on SQLite one marker per event, on PostgreSQL one per statement and minute
holding its events' ids (0020); the roll-up job adds the marked events onto the buckets
and deletes the markers in one transaction (see ``rollup.py``).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Index, String, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY

from tokenomy.analytics.histogram import NBUCKETS
from tokenomy.store.schema import metadata

#: Grouping columns, in order (empty string, never NULL, for "none").
DIMENSIONS: Final = (
    "org_id",
    "project_id",
    "key_id",
    "model",
    "vendor",
    "country",
    "region",
    "status",
    "currency",
)
#: Additive measures besides the histograms.
MEASURES: Final = (
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
)
LATENCY_COLS: Final = tuple(f"lat_{i:02d}" for i in range(NBUCKETS))
TTFT_COLS: Final = tuple(f"ttft_{i:02d}" for i in range(NBUCKETS))

_DIM_LENGTHS: Final = {"model": 200, "vendor": 64, "region": 64, "status": 16, "currency": 3}


def _columns() -> list[Column[object]]:
    cols: list[Column[object]] = [
        # m(inute) h(our) d(ay); H, D, K, O: coarser copies (see ``rollup.DERIVED``)
        Column("period", String(1), nullable=False),
        Column("bucket_ms", BigInteger, nullable=False),
    ]
    cols += [Column(d, String(_DIM_LENGTHS.get(d, 40)), nullable=False) for d in DIMENSIONS]
    cols += [Column(m, BigInteger, nullable=False) for m in MEASURES]
    cols += [Column(c, BigInteger, nullable=False) for c in LATENCY_COLS + TTFT_COLS]
    return cols


usage_rollups = Table(
    "usage_rollups",
    metadata,
    *_columns(),
    # One row per cell: what the roll-ups' upsert adds onto (migration 0005).
    Index("ux_usage_rollups_cell", "period", "bucket_ms", *DIMENSIONS, unique=True),
    Index("ix_usage_rollups_key", "key_id", "period", "bucket_ms"),
    Index("ix_usage_rollups_org", "org_id", "period", "bucket_ms"),
    # Room in each page for a cell's next version, so most runs' updates touch no index
    # (migration 0018).
    postgresql_with={"fillfactor": 70},
)

analytics_pending = Table(
    "analytics_pending",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("bucket_ms", BigInteger, nullable=False),  # the event's minute
    # A set marker's events (PostgreSQL, 0020): its id is "set:<uuid>", and every event
    # in it falls in its minute. NULL for one event's marker (its own request id).
    Column("request_ids", ARRAY(String(64)).with_variant(Text(), "sqlite"), nullable=True),
    Index("ix_analytics_pending_bucket", "bucket_ms"),
)

#: Small durable settings of the roll-up job, such as how far back minutes are kept.
analytics_state = Table(
    "analytics_state",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
