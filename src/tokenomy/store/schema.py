"""The durable tables, as SQLAlchemy Core metadata shared by SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
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
    # Money (0002): what the org paid, in its currency, and the list price it came from.
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("currency", String(3), nullable=True),
    Column("list_cost_nanos", BigInteger, nullable=False, default=0),
    Column("list_currency", String(3), nullable=True),
    Column("price_version", String(200), nullable=True),
    Column("fx_rate", String(40), nullable=True),
    Column("held_nanos", BigInteger, nullable=False, default=0),
    # The price tier billed (0008): "standard", or "batch" at the catalogue's batch price.
    Column("price_tier", String(16), nullable=True),
    Index("ix_usage_events_ts", "ts_ms"),
    Index("ix_usage_events_key_ts", "key_id", "ts_ms"),
    Index("ix_usage_events_org_ts", "org_id", "ts_ms"),
)

# ---- Feedback on answers (0009) -------------------------------------------------------

#: A client's score for one of its requests (0–1), kept beside its usage record; the
#: prompt's end (what the learned router reads) when the gateway still had it, so
#: ``tokenomy router export`` can write training rows.
request_feedback = Table(
    "request_feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("org_id", String(40), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("score", Float, nullable=False),
    Column("comment", Text, nullable=True),
    Column("prompt", Text, nullable=True),
    Column("ts_ms", BigInteger, nullable=False),
    Index("ix_request_feedback_org_ts", "org_id", "ts_ms"),
)


# ---- The ledger (0002) ----------------------------------------------------------------

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    # prepaid: the balance may not go below zero; postpaid: not below -credit_limit.
    Column("mode", String(16), nullable=False),
    Column("credit_limit_nanos", BigInteger, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False, index=True),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False, index=True),
)

budgets = Table(
    "budgets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("scope", String(16), nullable=False),  # org | project | key
    Column("scope_id", String(40), nullable=False),
    Column("period", String(16), nullable=False),  # day | week | month | lifetime
    Column("amount_nanos", BigInteger, nullable=True),  # in the org's currency
    Column("token_limit", BigInteger, nullable=True),
    Column("tz", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False, index=True),
    Column("deleted_ms", BigInteger, nullable=True),
)

#: The admin transaction kinds as SQL, for the partial index and the queries it serves
#: (a planner uses a partial index only for a query stating the same literal condition).
#: The admin transaction kinds (top-ups, credits, refunds, adjustments): every other kind
#: is usage.
ADMIN_KINDS = ("topup", "credit", "refund", "adjustment")
ADMIN_KINDS_SQL = "kind IN (" + ", ".join(f"'{k}'" for k in ADMIN_KINDS) + ")"

# Double entry: every transaction's postings sum to zero per currency. An org's balance is
# the sum of the postings on its account "org:<id>".
ledger_txns = Table(
    "ledger_txns",
    metadata,
    Column("id", String(80), primary_key=True),  # "usage:<request id>" for usage
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # topup credit refund adjustment usage
    Column("org_id", String(40), nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("memo", Text, nullable=True),
    Index("ix_ledger_txns_org_ts", "org_id", "ts_ms"),
    # Only the rare admin transactions (top-ups, credits, refunds, adjustments): what the
    # gateway re-reads every second, without scanning every usage transaction ever made,
    # and nothing for the writer to maintain on a usage row.
    Index(
        "ix_ledger_txns_admin",
        "org_id",
        sqlite_where=text(ADMIN_KINDS_SQL),
        postgresql_where=text(ADMIN_KINDS_SQL),
    ),
)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    Column("txn_id", String(80), primary_key=True),
    Column("account", String(120), primary_key=True),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Index("ix_ledger_postings_account", "account"),
)


# ---- The writer's dead letters (0007) --------------------------------------------------

# A record the database refused (a usage event with its ledger rows), kept whole as JSON
# for an operator, so that the rows queued behind it still land. Keyed by a hash of the
# record: quarantining the same record again (a replayed batch) adds nothing.
writer_dead_letters = Table(
    "writer_dead_letters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    # The usage event's request id, when the record has one (JSON-safe, may be cut short).
    Column("request_id", String(64), nullable=True),
    Column("reason", Text, nullable=False),
    # [{"table": ..., "row": {...}}, ...]: every row of the record, as it was queued.
    Column("record", Text, nullable=False),
    Index("ix_writer_dead_letters_ts", "ts_ms"),
)
