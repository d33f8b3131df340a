"""Database engines and migrations, for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

from importlib import resources
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

#: The newest migration's revision (a test checks it against the migration scripts). A
#: database already there is not handed to Alembic at all: Alembic, Mako and Pygments
#: would otherwise stay imported in every gateway process, some 10 MB of it.
HEAD_REVISION = "0020"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


#: Rows a bulk load (every key, every org) reads at a time (``yield_per``).
LOAD_CHUNK = 500

#: SQLite's page size for a new database, and the WAL pages between checkpoints.
SQLITE_PAGE_SIZE = 8192
SQLITE_CHECKPOINT_PAGES = 5000


def open_engine(url: str) -> Engine:
    """An engine tuned for the batched writer: WAL and a busy timeout on SQLite."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            # Before WAL, and only a new database takes it. Each flush of the usage writer
            # dirties a leaf of every org and key index for every tenant it holds, and a
            # commit's cost follows its page count more than its bytes: with 1,000
            # tenants 8 KB pages took the writer from 63 to 50 µs a request.
            cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            # WAL lets readers (CLI, admin, analytics) run beside the single writer.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint every 40 MB of WAL rather than every 4 MB (1,000 pages of 4 KB):
            # with many tenants a flush writes a few MB, so each commit also copied pages
            # back, and a page rewritten by several flushes was copied once per flush.
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
            cur.close()

        return engine
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def revision(engine: Engine) -> str | None:
    """The database's schema revision; None before the first migration."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # no alembic_version table yet


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe on every start)."""
    if revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option(
        "script_location", str(resources.files("tokenomy.store").joinpath("migrations"))
    )
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait, then find it done.
            conn.execute(text("SELECT pg_advisory_xact_lock(7234917)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
