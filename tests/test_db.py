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
