"""Analytics tables (migrations 0003 to 0005): rollup buckets and the queue of events to
roll up.

``usage_rollups`` holds one row per (period, bucket, org, project, key, model, vendor,
country, region, status, currency) with additive measures only, so any coarser view is
a SUM over rows. The usage events not yet rolled up are marked by a trigger on
``usage_events`` (only for events actually inserted, so a replay leaves none): on SQLite
one marker per event in ``analytics_pending``; on PostgreSQL one per statement and minute
in ``analytics_pending_sets``, holding its events' ids (0020). ``analytics_pending`` also
holds repairs (``reconcile:<minute>``). The roll-up job adds the marked events onto the
buckets and deletes the markers in one transaction (see ``rollup.py``).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text
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
    Index("ix_analytics_pending_bucket", "bucket_ms"),
)

#: PostgreSQL (0020): one marker per statement of the usage writer and minute, holding
#: the ids of the events it inserted in that minute (a marker row per event, deleted again
#: by the roll-ups, cost the writer's connection a sixth of its CPU). A table of its own,
#: not rows of ``analytics_pending``: a replica still running the code before it, during a
#: rolling upgrade, would take such a row for one event's and drop its events. Ids are in
#: insertion order, so runs take the oldest first. Empty on SQLite.
analytics_pending_sets = Table(
    "analytics_pending_sets",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("bucket_ms", BigInteger, nullable=False),  # the minute every event in it falls in
    Column("events", Integer, nullable=False),  # how many ids it holds
    Column("request_ids", ARRAY(String(64)).with_variant(Text(), "sqlite"), nullable=False),
    Index("ix_analytics_pending_sets_bucket", "bucket_ms"),
)

#: Small durable settings of the roll-up job, such as how far back minutes are kept.
analytics_state = Table(
    "analytics_state",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
