"""The migrations and the table metadata describe one schema: an empty database migrated
to head matches the metadata exactly (Alembic's own comparison), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import tokenomy.analytics.tables  # noqa: F401  (registers the analytics tables on the metadata)
from tests.conftest import query_plan, throwaway_postgres
from tokenomy.store.db import migrate, open_engine
from tokenomy.store.schema import metadata


@pytest.fixture(params=["sqlite", "postgres"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'drift.db'}")
        yield engine
        engine.dispose()
        return
    with throwaway_postgres() as url:
        engine = open_engine(url)
        yield engine
        engine.dispose()


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        diffs = compare_metadata(ctx, metadata)
    # Alembic's own bookkeeping table is not ours to describe.
    return [d for d in diffs if "alembic_version" not in repr(d)]


def test_migrated_schema_matches_the_metadata(fresh: Engine) -> None:
    migrate(fresh)
    assert _differences(fresh) == []


def test_the_comparison_sees_a_drift(fresh: Engine) -> None:
    # Proof the check can fail: a column the migrations never made is reported.
    from sqlalchemy import Column, Integer, MetaData, Table

    migrate(fresh)
    extra = MetaData()
    for t in metadata.tables.values():
        t.to_metadata(extra)
    Table("orgs", extra, Column("drifted", Integer), extend_existing=True)
    with fresh.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, extra)
    assert any("drifted" in repr(d) for d in diffs)


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("task_id = 't1'", "ix_usage_events_task"),
        ("org_id = 'o' AND end_user = 'u' AND ts_ms >= 5", "ix_usage_events_org_user_ts"),
    ],
)
def test_lookups_by_task_and_end_user_use_their_partial_indexes(
    fresh: Engine, where: str, index: str
) -> None:
    # Partial (only rows that name a task or an end user), yet chosen for "= value".
    migrate(fresh)
    q = f"SELECT sum(cost_nanos) FROM usage_events WHERE {where}"
    plan = query_plan(fresh, q)
    assert index in plan, plan
