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
HEAD_REVISION = "0019"


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def open_engine(url: str) -> Engine:
    """An engine tuned for the batched writer: WAL and a busy timeout on SQLite."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers (CLI, admin, analytics) run beside the single writer.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
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
