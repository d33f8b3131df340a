"""The durable tables, as SQLAlchemy Core metadata shared by SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
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
    # The task (one agent run) the call belonged to (0010): X-Tokenomy-Task or a task id.
    Column("task_id", String(64), nullable=True),
    # The organisation's end user the call was made for (0012): OpenAI's user /
    # safety_identifier, Anthropic's metadata.user_id.
    Column("end_user", String(128), nullable=True),
    # Of cache_write_tokens, those written to a one-hour cache (0013): billed at their price.
    Column("cache_write_1h_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_usage_events_ts", "ts_ms"),
    Index("ix_usage_events_key_ts", "key_id", "ts_ms"),
    Index("ix_usage_events_org_ts", "org_id", "ts_ms"),
    # Partial (0016): most calls name neither, and every lookup asks for one.
    Index(
        "ix_usage_events_task",
        "task_id",
        postgresql_where=text("task_id IS NOT NULL"),
        sqlite_where=text("task_id IS NOT NULL"),
    ),
    Index(
        "ix_usage_events_org_user_ts",
        "org_id",
        "end_user",
        "ts_ms",
        postgresql_where=text("end_user IS NOT NULL"),
        sqlite_where=text("end_user IS NOT NULL"),
    ),
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
    Column("scope", String(16), nullable=False),  # org | project | key | user
    # An end user's is "<org id>:<user>" (0012 widened it from 40).
    Column("scope_id", String(200), nullable=False),
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
    # No index ordered by org (0019): a usage transaction is written for every billed
    # request, and one would take each in a different place. An org's entries are read
    # through its account's postings.
    # Only the rare admin transactions (top-ups, credits, refunds, adjustments): what the
    # gateway re-reads every second, without scanning every usage transaction ever made,
    # and nothing for the writer to maintain on a usage row.
    Index(
        "ix_ledger_txns_admin",
        "org_id",
        sqlite_where=text(ADMIN_KINDS_SQL),
        postgresql_where=text(ADMIN_KINDS_SQL),
    ),
    # The same by time (0017): which orgs had one lately, so the refresh reads those only.
    Index(
        "ix_ledger_txns_admin_ts",
        "ts_ms",
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

#: Stored Responses-API answers (``store: true``), per owner (the key's organisation),
#: so ``previous_response_id`` chains survive restarts and work on every replica.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(40), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # The Response object as answered (JSON).
    Column("response", Text, nullable=False),
    # This request's input items, with their ids (JSON list).
    Column("input_items", Text, nullable=False),
    # The whole conversation up to and including this answer, as chat messages (JSON):
    # what a call chained to it re-sends upstream.
    Column("context", Text, nullable=False),
    Index("ix_responses_owner", "owner", "created_ms"),
    # The purge of answers past their retention (0012).
    Index("ix_responses_created", "created_ms"),
)

#: Tasks made through ``POST /v1/tasks`` (0010): a task's owner and its budget, one more
#: ledger level under the organisation's. Spend is summed from the usage events.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(40), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("currency", String(3), nullable=True),
    Column("budget_nanos", BigInteger, nullable=True),
    Column("budget_tokens", BigInteger, nullable=True),
)

# ---- Files and batches (0011) ----------------------------------------------------------

# An uploaded (or produced) file: its bytes sit in ``file_chunks``, about 1 MB a row, so
# that neither an upload nor a download is ever held whole in memory. ``owner`` is the
# org (or, for a key without one, the key) that may see it.
files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(40), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(400), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # epoch seconds, as OpenAI's
    Index("ix_files_owner", "owner", "id"),
)

file_chunks = Table(
    "file_chunks",
    metadata,
    Column("file_id", String(40), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("input_file_id", String(40), nullable=False),
    Column("completion_window", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("errors", Text, nullable=True),  # JSON list of {code, message, param, line}
    Column("metadata", Text, nullable=True),  # JSON object
    Column("output_file_id", String(40), nullable=True),
    Column("error_file_id", String(40), nullable=True),
    Column("total", Integer, nullable=False, default=0),
    # The worst case held for the whole batch at creation, in the org's currency.
    Column("held_nanos", BigInteger, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("finalizing_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    Column("failed_at", BigInteger, nullable=True),
    Column("expired_at", BigInteger, nullable=True),
    Column("cancelling_at", BigInteger, nullable=True),
    Column("cancelled_at", BigInteger, nullable=True),
    # Epoch ms until which one process finalizes the batch (a crash lets another).
    Column("lease_until", BigInteger, nullable=False, default=0),
    # JSON: when and where the batch is planned to run, what it should cost and save.
    Column("plan", Text, nullable=True),
    # JSON: the vendor batch its lines were handed to (native vendor batch APIs).
    Column("vendor_batch", Text, nullable=True),
    Index("ix_batches_owner", "owner", "id"),
    Index("ix_batches_status", "status"),
)

# One line of a batch. ``request_id`` is the usage record the line's final outcome is
# recorded under: fixed at creation, so a line run again after a crash cannot be billed
# twice (the writer skips an existing request id).
batch_lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("custom_id", String(512), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | done | cancelled | expired
    # Epoch ms until which a process runs the line; pending lines past it may be claimed.
    Column("lease_until", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("held_nanos", BigInteger, nullable=False, default=0),
    Column("held_tokens", BigInteger, nullable=False, default=0),
    Index("ix_batch_lines_claim", "state", "lease_until"),
    Index("ix_batch_lines_batch_state", "batch_id", "state"),
)

# A line's final outcome: written by the usage writer in the same transaction as the
# line's usage event and ledger rows, so a result exists if and only if it was billed.
# It is also the side table that ties a usage record to its batch and custom_id.
batch_results = Table(
    "batch_results",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("batch_id", String(40), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("custom_id", String(512), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("body", Text, nullable=True),  # the response body (JSON)
    Column("error", Text, nullable=True),  # {code, message} JSON, for lines never run
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("ts_ms", BigInteger, nullable=False),
    Index("ix_batch_results_batch", "batch_id", "line_no"),
)

# ---- Video jobs (0014) -----------------------------------------------------------------

# A queued generation job (``POST /v1/videos``). It waits in its deployment's fair queue
# (``status`` queued), is leased to one process while it renders (in_progress, with
# ``lease_until``; a dead process's lease lapses and the job is queued again), and ends
# completed, failed or cancelled. ``hold_open`` is 1 while the job's hold (made at
# submission, with the job id as its id) is neither settled nor released: clearing it
# with a conditional UPDATE is what makes a release happen once. Times are epoch ms.
video_jobs = Table(
    "video_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(40), nullable=False),  # the org, or a house key's own id
    Column("key_id", String(40), nullable=False),
    Column("model", String(128), nullable=False),
    Column("deployment", String(200), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("seconds", Integer, nullable=False),
    Column("size", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("progress", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),  # {code, message} JSON
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
    Column("completed_ms", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),  # epoch seconds, content kept until
    Column("lease_until", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("upstream_id", String(200), nullable=True),  # the vendor's job, resumed after a crash
    Column("held_nanos", BigInteger, nullable=False, default=0),
    Column("hold_open", Integer, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("currency", String(8), nullable=True),
    Column("render_ms", BigInteger, nullable=True),  # started to completed, measured
    Index("ix_video_jobs_queue", "deployment", "status", "created_ms"),
    Index("ix_video_jobs_turns", "deployment", "owner", "started_ms"),
    Index("ix_video_jobs_owner", "owner", "created_ms"),
)

# A finished job's media: written by the usage writer in the same transaction as the
# job's usage event and ledger rows, so media exists if and only if the job was billed,
# and a job with media is never rendered again.
video_outputs = Table(
    "video_outputs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("content_type", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("ts_ms", BigInteger, nullable=False),
)
