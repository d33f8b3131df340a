"""Analytics: on PostgreSQL, one roll-up marker per write and minute instead of one per
event.

The statement-level trigger of 0005 inserted a marker row for every usage event the
usage writer inserted, and the roll-ups deleted each one again: about a sixth of the
writer's PostgreSQL CPU, and as much again in the roll-ups. It now inserts one row per
minute the statement's events fall in, into ``analytics_pending_sets``, with their ids;
still only for the rows the statement really inserted. A table of its own: a replica
still running the roll-ups before this revision (a rolling upgrade) reads only
``analytics_pending`` and leaves the sets to the new ones. Repairs and rebuilds
(``Rollups.reconcile``, ``Rollups.rebuild``) must not run from such a replica: it would
recompute minutes from their events and leave their sets, counted again later. SQLite's
trigger runs per row and stays as it was (the table is there, empty).

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_PG_SET_FUNCTION = """
CREATE OR REPLACE FUNCTION tokenomy_usage_events_pending() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO analytics_pending_sets (bucket_ms, events, request_ids)
  SELECT bucket, count(*), array_agg(request_id)
  FROM (SELECT request_id, ts_ms - ts_ms % 60000 AS bucket FROM new_events) AS e
  GROUP BY bucket;
  RETURN NULL;
END
$$
"""
# 0005's: a marker per event.
_PG_EVENT_FUNCTION = """
CREATE OR REPLACE FUNCTION tokenomy_usage_events_pending() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO analytics_pending (request_id, bucket_ms)
  SELECT request_id, ts_ms - ts_ms % 60000 FROM new_events
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END
$$
"""


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "analytics_pending_sets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("request_ids", ARRAY(sa.String(64)) if pg else sa.Text(), nullable=False),
    )
    op.create_index("ix_analytics_pending_sets_bucket", "analytics_pending_sets", ["bucket_ms"])
    if pg:
        op.execute(_PG_SET_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_EVENT_FUNCTION)
        # No set may be added after the move: a writer's insert waits for this lock, then
        # fails with the table gone, and the writer retries its batch (on the function
        # above). Then each set's events get their own marker back.
        op.execute("LOCK TABLE analytics_pending_sets IN EXCLUSIVE MODE")
        op.execute(
            "WITH moved AS (DELETE FROM analytics_pending_sets RETURNING request_ids, bucket_ms) "
            "INSERT INTO analytics_pending (request_id, bucket_ms) "
            "SELECT unnest(request_ids), bucket_ms FROM moved ON CONFLICT DO NOTHING"
        )
    op.drop_index("ix_analytics_pending_sets_bucket", "analytics_pending_sets")
    op.drop_table("analytics_pending_sets")
