"""Analytics: on PostgreSQL, one roll-up marker per write and minute instead of one per
event.

The statement-level trigger of 0005 inserted a marker row for every usage event the
usage writer inserted, and the roll-ups deleted each one again: about a sixth of the
writer's PostgreSQL CPU, and as much again in the roll-ups. It now inserts one marker per
minute the statement's events fall in, ``set:<uuid>``, with their ids in
``request_ids``; still only for the rows the statement really inserted. SQLite's trigger
runs per row and stays as it was (the column is there, always NULL).

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
  INSERT INTO analytics_pending (request_id, bucket_ms, request_ids)
  SELECT 'set:' || gen_random_uuid(), bucket, array_agg(request_id)
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
    column_type = ARRAY(sa.String(64)) if pg else sa.Text()
    op.add_column("analytics_pending", sa.Column("request_ids", column_type, nullable=True))
    if pg:
        op.execute(_PG_SET_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_EVENT_FUNCTION)
        # Each set's events get their own marker back, before the column goes.
        op.execute(
            "INSERT INTO analytics_pending (request_id, bucket_ms) "
            "SELECT unnest(request_ids), bucket_ms FROM analytics_pending "
            "WHERE request_ids IS NOT NULL ON CONFLICT DO NOTHING"
        )
        op.execute("DELETE FROM analytics_pending WHERE request_ids IS NOT NULL")
    # Not a batch (copy and rename) on SQLite: the rename trips over the trigger on
    # usage_events that names this table. SQLite drops a column itself since 3.35.
    op.drop_column("analytics_pending", "request_ids")
