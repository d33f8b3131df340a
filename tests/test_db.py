"""Migrations: the head revision the code expects, and start-ups that skip Alembic."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from tokenomy.store.db import HEAD_REVISION, migrate, open_engine, revision


def test_head_revision_is_the_newest_migration_script() -> None:
    cfg = AlembicConfig()
    location = resources.files("tokenomy.store").joinpath("migrations")
    cfg.set_main_option("script_location", str(location))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_a_migrated_database_starts_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = open_engine(url)
    assert revision(engine) is None  # a new database
    migrate(engine)
    assert revision(engine) == HEAD_REVISION
    engine.dispose()
    code = (
        "import sys\n"
        "from tokenomy.store.db import migrate, open_engine\n"
        f"migrate(open_engine({url!r}))\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_new_sqlite_database_has_large_pages_and_an_older_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    """8 KB pages and a checkpoint every 5,000 of them: a usage flush with many tenants
    dirties a page per tenant in each org or key index, and its cost follows the pages.
    The page size only takes on a new file; a database made before keeps its 4 KB pages
    and works as it did."""
    import sqlite3

    from tokenomy.store.db import SQLITE_CHECKPOINT_PAGES, SQLITE_PAGE_SIZE

    new = open_engine(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(new)
    with new.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE == 8192
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    new.dispose()
    assert SQLITE_CHECKPOINT_PAGES == 5000

    old_file = tmp_path / "old.db"
    with sqlite3.connect(old_file) as raw:  # as a release before this one left it
        raw.execute("PRAGMA page_size=4096")
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE made_before (x)")
    old = open_engine(f"sqlite:///{old_file}")
    migrate(old)
    with old.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert revision(old) == HEAD_REVISION
    old.dispose()
