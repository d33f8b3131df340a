"""Real PostgreSQL and Redis for tests: fail under CI when unreachable, skip elsewhere."""

from __future__ import annotations

import os
import socket

import pytest

PG_URL = os.environ.get("TOKENOMY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOKENOMY_TEST_REDIS", "redis://127.0.0.1:6379/14")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    msg = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (required under CI)")
    pytest.skip(msg)


def require_redis() -> str:
    require("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def require_postgres() -> str:
    require("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL
