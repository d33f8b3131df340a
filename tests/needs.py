"""Skip (locally) or fail (in CI) when a service a test needs is not running."""

from __future__ import annotations

import os
import socket

import pytest

PG_URL = os.environ.get("TOKENOMY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOKENOMY_TEST_REDIS", "redis://127.0.0.1:6379/14")


def require_service(name: str, host: str, port: int) -> None:
    """Fail when CI is "true" and the service is unreachable; skip otherwise."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as e:
        reason = f"{name} is not reachable at {host}:{port} ({e}); start it to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_redis(host: str = "127.0.0.1", port: int = 6379) -> str:
    """The test Redis URL, once Redis answers."""
    require_service("Redis", host, port)
    return REDIS_URL


def require_postgres(host: str = "127.0.0.1", port: int = 5432) -> str:
    """The URL of the server's maintenance database, once PostgreSQL answers."""
    require_service("PostgreSQL", host, port)
    return PG_URL
