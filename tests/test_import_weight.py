"""A gateway loads only what its configuration uses: without Redis, not the Redis client;
with its database at the newest revision, not Alembic (each some 10 MB a process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tokenomy.store.db import migrate, open_engine

SCRIPT = """
import asyncio, sys
from tokenomy.cli.main import main  # every command's imports, as `tokenomy serve` has them
from tokenomy.app import app_for
from tokenomy.config import parse_config
from tokenomy.services import build_services

async def run():
    svc = build_services(parse_config(sys.argv[1], "gw.yaml"), {})
    await svc.start()
    app_for(svc)
    await svc.stop()

asyncio.run(run())
heavy = sorted(m for m in ("redis", "alembic", "mako") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_a_sqlite_gateway_at_head_loads_neither_redis_nor_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    migrate(open_engine(url))
    config = f'database: {{url: "{url}"}}\nvendors: {{}}\nmodels: []\n'
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, config], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "none"
