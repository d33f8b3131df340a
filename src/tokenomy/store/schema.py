"""The durable tables, as SQLAlchemy Core metadata shared by SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("org_id", String(40), nullable=True),
    Column("project_id", String(40), nullable=True),
    # JSON list of model names this key may use; NULL means every model.
    Column("allowed_models", Text, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    # Bumped on every change so replicas refresh only what moved.
    Column("updated_ms", BigInteger, nullable=False, index=True),
)

usage_events = Table(
    "usage_events",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("key_id", String(40), nullable=True),
    Column("org_id", String(40), nullable=True),
    Column("project_id", String(40), nullable=True),
    Column("endpoint", String(32), nullable=False),
    Column("dialect", String(16), nullable=False),
    Column("model", String(200), nullable=False),
    Column("deployment", String(300), nullable=True),
    Column("vendor", String(64), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("usage_source", String(16), nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Index("ix_usage_events_ts", "ts_ms"),
    Index("ix_usage_events_key_ts", "key_id", "ts_ms"),
)
