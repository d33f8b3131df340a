"""Analytics: roll-ups add new events onto their buckets instead of recomputing them.

A unique index on each bucket's cell is what the roll-ups' upsert adds onto (it replaces
the (period, bucket) index, its prefix). A trigger on ``usage_events`` makes each new
event's marker, only when the event is really inserted, so a replayed event is never
added twice. Markers left by the recomputing roll-ups become one "recompute this minute"
marker per minute: their events may already be counted, so they are recomputed, not
added.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CELL = [
    "period",
    "bucket_ms",
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
_RECOMPUTE = "reconcile:"

_SQLITE_TRIGGER = """
CREATE TRIGGER usage_events_pending AFTER INSERT ON usage_events
BEGIN
  INSERT OR IGNORE INTO analytics_pending (request_id, bucket_ms)
  VALUES (NEW.request_id, NEW.ts_ms - NEW.ts_ms % 60000);
END
"""
# A statement-level trigger: one INSERT ... SELECT per statement, from the rows that
# statement really inserted (ON CONFLICT DO NOTHING leaves skipped rows out).
_PG_FUNCTION = """
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
_PG_TRIGGER = """
CREATE TRIGGER usage_events_pending AFTER INSERT ON usage_events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION tokenomy_usage_events_pending()
"""


def upgrade() -> None:
    op.execute(
        "INSERT INTO analytics_pending (request_id, bucket_ms) "
        f"SELECT DISTINCT '{_RECOMPUTE}' || bucket_ms, bucket_ms FROM analytics_pending "
        f"WHERE request_id NOT LIKE '{_RECOMPUTE}%' ON CONFLICT DO NOTHING"
    )
    op.execute(f"DELETE FROM analytics_pending WHERE request_id NOT LIKE '{_RECOMPUTE}%'")
    op.drop_index("ix_usage_rollups_period_bucket", table_name="usage_rollups")
    op.create_index("ux_usage_rollups_cell", "usage_rollups", _CELL, unique=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS usage_events_pending"
        + (" ON usage_events" if op.get_bind().dialect.name == "postgresql" else "")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tokenomy_usage_events_pending()")
    op.drop_index("ux_usage_rollups_cell", table_name="usage_rollups")
    op.create_index("ix_usage_rollups_period_bucket", "usage_rollups", ["period", "bucket_ms"])
