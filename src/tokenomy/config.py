"""Typed configuration: one YAML file (or the packaged default), validated once at start.

Validation errors name the file, line and field, so ``tokenomy config check`` can point at
the mistake. The loaded :class:`Config` is passed explicitly to whoever needs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tokenomy.core.origin import Origin
from tokenomy.core.proxy_url import Proxy

Dialect = Literal["openai", "anthropic"]
Capability = Literal["tools", "vision", "json", "stream", "reasoning", "embeddings", "responses"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_messages: int = Field(4096, ge=1)
    #: Seconds a client has to send a request's whole head, from its first byte (or from
    #: connecting); past it the answer is 408 and the connection closes.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds a request body may go without a byte arriving before 408 and a close.
    body_timeout_s: float = Field(30.0, gt=0)
    #: Bytes held, over all connections, of requests not yet authenticated (heads still
    #: arriving); past it a connection that adds more is refused (503).
    max_unauthenticated_bytes: int = Field(32 * 1024 * 1024, ge=65536)
    #: Seconds to wait for an upstream's first byte before falling back or answering 504.
    first_byte_timeout_s: float = Field(60.0, gt=0)
    #: Seconds an upstream may stay silent mid-stream before the stream is cut.
    read_timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    #: Seconds a request waits for a free connection to a vendor whose pool is full
    #: (``max_connections``) before it is refused with 503: the gateway's overload, which
    #: never counts against the vendor's health.
    pool_wait_s: float = Field(5.0, gt=0)
    #: A vendor answer (decoded) larger than this is a 502, and so is a stream event:
    #: memory per request stays bounded. A vendor's own ``max_response_bytes`` overrides.
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Output cap used when a request gives no max_tokens and the model states no limit.
    default_max_output_tokens: int = Field(4096, ge=1)
    #: The most choices one request may ask for (``n``, and ``best_of`` on legacy
    #: completions): each is held for and billed, so this bounds a request's worst case.
    max_choices: int = Field(16, ge=1, le=128)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///tokenomy.db"


class WriterConfig(_Strict):
    #: Group-commit interval; 0 makes every record synchronous (slow, but loses nothing).
    #: What a longer one costs: the events of the last interval are lost if the process
    #: is killed outright (SIGTERM drains them). What it saves: every commit writes the
    #: last page of each table and index again (on SQLite some 19 WAL frames, whatever
    #: the batch). At 1000 req/s on 2 cores, 50 ms against 10 ms took the writer thread
    #: from 115-138 to 53-74 µs of CPU a request, with p99 no worse (4-9 ms against
    #: 7-17 ms on a VM losing CPU to its host). When a flush bound its rows through
    #: SQLAlchemy, 100 ms batches had stalled the event loop; the writer's own cursor
    #: does not.
    flush_interval_ms: int = Field(50, ge=0, le=60_000)
    batch_max: int = Field(2000, ge=1)
    #: /healthz answers 503 once the oldest record not yet committed is older than this
    #: (a database down or refusing every write) ...
    health_max_lag_s: float = Field(30.0, gt=0)
    #: ... or once more records than this wait in memory.
    health_max_pending: int = Field(100_000, ge=1)


class LedgerConfig(_Strict):
    """Holds and live balances; Redis makes them global across replicas."""

    #: Redis URL for shared live state (holds, balances, budgets); empty = this process.
    #: ``TOKENOMY_REDIS_URL`` overrides it.
    redis_url: str = ""
    #: A hold not settled by then is released (a crashed or stuck request).
    hold_ttl_s: float = Field(900.0, gt=0, le=86_400)
    #: Tokens assumed per image when bounding a prompt for a hold.
    image_tokens: int = Field(6000, ge=0)
    #: How often top-ups and account changes made elsewhere are picked up.
    refresh_s: float = Field(1.0, gt=0, le=300)
    #: Key prefix in Redis, so several gateways can share one Redis.
    redis_prefix: str = "tk:"
    #: With Redis: the part of a busy balance's or budget's free funds one gateway process
    #: reserves ahead, admitting holds from it without a round trip. Never lets a balance
    #: below its floor or a budget over its limit; other processes may be refused early by
    #: up to this share per process. 0: every hold and settlement goes to Redis.
    lease_share: float = Field(0.01, ge=0, le=0.5)
    #: How long usage settled against a lease waits before it is posted to Redis (all
    #: meters in one call); a meter with a few requests' usage waits up to 40 times that
    #: (at most 2.5 s) for more. A process killed outright leaves that much usage (at
    #: most its reserve) out of the live counters (not out of the durable ledger) until
    #: they are rebuilt. At most 100 ms: under a quarter of the 0.5 s a rebuild waits for
    #: every process to hand over what it has, or the rebuild could count it twice.
    lease_flush_ms: int = Field(50, ge=1, le=100)


class LimitsConfig(_Strict):
    """Requests and tokens per minute and concurrent requests; omitted = unlimited."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)


class RateLimitsConfig(_Strict):
    """Default limits for every key, every org, and per public model name."""

    key: LimitsConfig | None = None
    org: LimitsConfig | None = None
    models: dict[str, LimitsConfig] = Field(default_factory=dict)
    #: With Redis: the most of each limit one gateway process takes ahead as a lease,
    #: admitting from it without a round trip. Never lets a limit be exceeded; other
    #: processes may be refused early by up to this share per process. 0: every request
    #: asks Redis.
    lease_share: float = Field(0.01, ge=0, le=0.5)


class RegionConfig(_Strict):
    """Where deployments run: power price and energy, for placing latency-tolerant work."""

    #: Electricity price in USD per kWh, as a quoted decimal (e.g. "0.03").
    usd_per_kwh: Decimal
    #: IT energy to produce a million tokens there, kWh (before PUE).
    kwh_per_m_tokens: Decimal | None = None
    pue: Decimal = Decimal("1.2")
    #: Round trip from this gateway to the region.
    rtt_ms: float = Field(0.0, ge=0)


class RoutingConfig(_Strict):
    #: The policy when a request says nothing: an OpenRouter ``provider`` object.
    default: dict[str, Any] = Field(default_factory=dict)
    #: The longest a request waits in a deployment's queue (X-Tokenomy-Max-Wait lowers it).
    max_queue_wait_s: float = Field(30.0, ge=0, le=3600)
    #: Consecutive failures that rest a deployment, and its first rest.
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(10.0, gt=0, le=3600)
    #: Cache affinity: a task's calls (or calls sharing a long prompt prefix) go back to
    #: the deployment whose prompt cache is warm (see tokenomy.routing.affinity).
    affinity: bool = True
    #: How long a cache stays warm when neither the request nor the vendor says.
    affinity_ttl_s: float = Field(300.0, gt=0, le=86_400)
    #: Share equally priced deployments at random by weight (load balancing) instead of
    #: always trying the heaviest first.
    spread_equal: bool = False


class RouterConfig(_Strict):
    """``model: "auto"``: the learned router and the pool it picks from."""

    #: The trained artifact (``tokenomy router train``); empty: the packaged one.
    artifact: str = ""
    #: The router's model names (the training data's columns) to configured model names.
    pool: dict[str, str] = Field(default_factory=dict)
    #: The quality bar (0–1) when a request sets none; None: the artifact's.
    default_bar: float | None = Field(None, ge=0, le=1)
    #: Models after the pick, best score first, to fall back on (the hold covers them).
    fallbacks: int = Field(1, ge=0, le=10)


class BatchesConfig(_Strict):
    """The batch worker each gateway process runs (see ``tokenomy.batches.worker``)."""

    #: Lines a process runs at once: batch work never takes more of the vendors than this.
    concurrency: int = Field(4, ge=0, le=256)
    #: How long a claimed line is a process's own; past it another may run it (a crash).
    lease_s: float = Field(600.0, gt=0, le=86_400)
    #: How often an idle worker looks for lines.
    poll_s: float = Field(0.5, gt=0, le=60)
    #: Lines per second a process is assumed to run before it has measured any: a new
    #: batch's latest start (the last that still ends inside its window) depends on it.
    default_lines_per_s: float = Field(2.0, gt=0, le=100_000)
    #: Hand a batch whose lines all go to one deployment of a vendor that sells a native
    #: batch API (OpenAI's shape) to that API, instead of running its lines one by one.
    native: bool = False
    #: How often a native vendor batch is polled.
    native_poll_s: float = Field(30.0, gt=0, le=3600)
    #: Lines a process runs at once while it is serving interactive calls (batch lines
    #: share its event loop, so they yield to them); ``concurrency`` or more: no yielding.
    yield_concurrency: int = Field(2, ge=0, le=256)
    #: Seconds without an interactive call before the full ``concurrency`` comes back.
    yield_quiet_s: float = Field(0.5, ge=0, le=3600)
    #: While yielding, no new line is claimed when the event loop lags by more than this
    #: (milliseconds; 0: not measured).
    yield_max_lag_ms: float = Field(5.0, ge=0, le=10_000)


class VideoModelConfig(_Strict):
    """A video model served through one deployment with a render capacity."""

    name: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    #: The vendor's model name (default: ``name``).
    model: str | None = None
    #: ``vendor/model`` of its media price when not the vendor's key and model.
    price: str | None = None
    #: Jobs the deployment renders at once (every process's together).
    capacity: int = Field(2, ge=1, le=10_000)
    #: Past this many queued jobs, new ones are refused (429 with Retry-After).
    max_queue_depth: int = Field(1000, ge=1)
    #: Longest video accepted, in seconds.
    max_seconds: int = Field(20, ge=1, le=3600)
    default_seconds: int = Field(4, ge=1)
    default_size: str = "720x1280"


class VideosConfig(_Strict):
    """Queued generation jobs (``/v1/videos``, see ``tokenomy.videos``)."""

    models: list[VideoModelConfig] = Field(default_factory=list)
    #: How long a rendering job is its process's own; renewed while it renders.
    lease_s: float = Field(30.0, gt=0, le=86_400)
    #: How often an idle worker looks for jobs, and a rendering one asks the vendor.
    poll_s: float = Field(0.5, gt=0, le=60)
    upstream_poll_s: float = Field(1.0, gt=0, le=60)
    #: Render seconds per output second assumed before any render was measured.
    default_render_ratio: float = Field(10.0, gt=0)
    #: Renders measured for the moving average of each deployment's render speed.
    measured_window: int = Field(20, ge=1, le=10_000)
    #: Tries of a job whose process died (or whose vendor failed) before it fails.
    max_attempts: int = Field(3, ge=1, le=100)
    #: How long a finished video's content is kept (``expires_at``).
    keep_s: int = Field(86_400, ge=60)
    #: A job's hold lasts this long at most (then the ledger releases it).
    hold_ttl_s: int = Field(7 * 86_400, ge=60)
    #: Media price entries shaped like the packaged media_prices.yaml's.
    prices: list[dict[str, Any]] = Field(default_factory=list)


class TracingConfig(_Strict):
    """OpenTelemetry traces of the request path (needs the ``otel`` extra)."""

    #: auto: OTLP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, else off.
    exporter: Literal["auto", "otlp", "console", "none"] = "auto"
    service_name: str = "tokenomy"


class AdminConfig(_Strict):
    #: Environment variable holding the admin key that guards /admin.
    key_env: str = "TOKENOMY_ADMIN_KEY"
    #: Environment variable holding a read-only token for scraping /metrics (the admin
    #: key works too); Prometheus sends it as ``authorization: {credentials: ...}``.
    metrics_token_env: str = "TOKENOMY_METRICS_TOKEN"
    #: Serve /metrics to anyone (spend by model and vendor is business data: only on a
    #: network where every reader may see it).
    public_metrics: bool = False


class VendorConfig(_Strict):
    """A vendor: a preset from the catalogue, optionally overridden field by field."""

    preset: str | None = None
    name: str | None = None
    country: str | None = None
    dialect: Dialect | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    auth: Literal["bearer", "x-api-key", "none"] | None = None
    stream_usage: bool | None = None
    #: How long its prompt cache stays warm after a use (cache affinity); unset: the
    #: preset's documented lifetime, else ``routing.affinity_ttl_s``.
    prompt_cache_ttl_s: float | None = Field(None, gt=0, le=86_400 * 7)
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(256, ge=1)
    #: ``http://[user:password@]host:port``: every connection goes through this proxy (a
    #: CONNECT tunnel). Unset: ``HTTPS_PROXY``/``HTTP_PROXY`` minus ``NO_PROXY``;
    #: ``direct``: no proxy whatever the environment says.
    proxy: str | None = None
    #: A PEM CA bundle that replaces the system's trust store for this vendor.
    ca_file: str | None = None
    #: A PEM client certificate (and its key, unless in the same file) for mutual TLS.
    client_cert: str | None = None
    client_key: str | None = None
    max_response_bytes: int | None = Field(None, ge=1024)
    #: The vendor's native batch API (overrides the preset's flag); "none": do not use it.
    native_batch: Literal["openai", "anthropic", "none"] | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is not None and v != "direct":
            Proxy.parse(v)
        return v

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _pem(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isfile(v):
            raise ValueError(f"no such file: {v}")
        return v

    @model_validator(mode="after")
    def _key_needs_cert(self) -> VendorConfig:
        if self.client_key and not self.client_cert:
            raise ValueError("client_key needs client_cert")
        return self

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if v:
            Origin.parse(v)  # what the vendor client will refuse, refused here with its line
        return v.rstrip("/") if v else v


class DeploymentConfig(_Strict):
    """One place a public model is served: a vendor and its upstream model id."""

    vendor: str
    model: str
    weight: int = Field(1, ge=0)
    region: str | None = None
    context_length: int | None = Field(None, ge=1)
    max_output: int | None = Field(None, ge=1)
    capabilities: list[Capability] | None = None
    #: Used only when no other deployment of the model is active (e.g. a simulator
    #: standing in until a vendor key is configured).
    standby: bool = False
    #: Requests this deployment serves at once; more wait in a fair queue.
    max_concurrent: int | None = Field(None, ge=1)
    #: Runs on our own hardware: what it costs is the energy it burns, so placement adds
    #: its region's kwh_per_m_tokens x pue x usd_per_kwh to its token price. A vendor's
    #: power is in its price (false, the default). Needs a region with kwh_per_m_tokens.
    self_hosted: bool = False
    #: The catalogue entry it is billed at, "vendor/model"; default its own vendor/model.
    price: str | None = Field(None, pattern=r"^[^/\s]+/\S+$")


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    description: str | None = None
    deployments: list[DeploymentConfig] = Field(min_length=1)


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    writer: WriterConfig = WriterConfig()
    admin: AdminConfig = AdminConfig()
    ledger: LedgerConfig = LedgerConfig()
    routing: RoutingConfig = RoutingConfig()
    tracing: TracingConfig = TracingConfig()
    batches: BatchesConfig = BatchesConfig()
    videos: VideosConfig = VideosConfig()
    regions: dict[str, RegionConfig] = Field(default_factory=dict)
    limits: RateLimitsConfig = RateLimitsConfig()
    router: RouterConfig = RouterConfig()
    #: Price entries shaped like the packaged prices.yaml's; they replace or add to it.
    prices: list[dict[str, Any]] = Field(default_factory=list)
    #: Extra FX rates shaped like the packaged fx.yaml's.
    fx: list[dict[str, Any]] = Field(default_factory=list)
    vendors: dict[str, VendorConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)
    #: Where the YAML came from, for messages; not part of the file.
    source: str = "<defaults>"
    #: The parsed YAML, so later checks (prices against the catalogue) name lines too.
    _node: yaml.Node | None = PrivateAttr(None)

    def where(self, *loc: str | int) -> str:
        """``source:line: field`` for a place in the file, as every config error starts."""
        line = _line_of(self._node, loc)
        field = ".".join(str(p) for p in loc)
        return f"{self.source}:{line}: {field}" if line else f"{self.source}: {field}"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names line and field."""


def default_config_text() -> str:
    return resources.files("tokenomy.catalog").joinpath("default-config.yaml").read_text()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a YAML config; ``None`` means the packaged default.

    ``TOKENOMY_DATABASE_URL`` overrides ``database.url`` so one file serves SQLite and
    PostgreSQL deployments alike.
    """
    if path is None:
        text, source = default_config_text(), "<default config>"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
        source = str(path)
    cfg = parse_config(text, source)
    db_url = os.environ.get("TOKENOMY_DATABASE_URL")
    if db_url:
        cfg = cfg.model_copy(update={"database": DatabaseConfig(url=db_url)})
    redis_url = os.environ.get("TOKENOMY_REDIS_URL")
    if redis_url:
        ledger = cfg.ledger.model_copy(update={"redis_url": redis_url})
        cfg = cfg.model_copy(update={"ledger": ledger})
    return cfg


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` (line numbers are kept)."""
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        val = env.get(m.group(1))
        if val:
            return val
        if m.group(2) is not None:
            return m.group(2)
        raise ConfigError(
            f"environment variable {m.group(1)} is not set (referenced as {m.group(0)})"
        )

    return _ENV_REF.sub(sub, text)


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        text = expand_env(text)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    if "source" in data:
        raise ConfigError(f"{source}: unknown field 'source'")
    try:
        cfg = Config.model_validate({**data, "source": source})
    except ValidationError as e:
        raise ConfigError(_describe(e, node, source)) from None
    _check_references(cfg, node, source)
    _check_prices(cfg.prices, node, source)
    cfg._node = node
    return cfg


def _describe(
    err: ValidationError, root: yaml.Node | None, source: str, under: tuple[Any, ...] = ()
) -> str:
    lines = []
    for item in err.errors():
        loc = under + tuple(item["loc"])
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        field = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{where}: {field}: {item['msg']}")
    return "\n".join(lines)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on ``loc`` that exists."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key is not None else best
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return best
            node = node.value[part]
        else:
            return best
        best = node.start_mark.line + 1
    return best


def _check_references(cfg: Config, root: yaml.Node | None, source: str) -> None:
    """Cross-field checks pydantic cannot see: duplicate names, unknown vendors."""
    from tokenomy.catalog.vendors import load_presets

    presets = load_presets()
    seen: dict[str, int] = {}
    problems = []
    for i, m in enumerate(cfg.models):
        for name in [m.name, *m.aliases]:
            if name in seen:
                line = _line_of(root, ("models", i, "name"))
                problems.append(f"{source}:{line}: models.{i}.name: '{name}' is defined twice")
            seen[name] = i
        for j, d in enumerate(m.deployments):
            problems += _self_hosted_problems(cfg, d, root, source, ("models", i, "deployments", j))
            if d.vendor not in cfg.vendors and d.vendor not in presets:
                line = _line_of(root, ("models", i, "deployments", j, "vendor"))
                problems.append(
                    f"{source}:{line}: models.{i}.deployments.{j}.vendor: unknown vendor "
                    f"'{d.vendor}' (not in vendors: and no catalogue preset of that name)"
                )
    for name, v in cfg.vendors.items():
        preset = v.preset or name
        if preset not in presets and (v.base_url is None or v.dialect is None):
            line = _line_of(root, ("vendors", name))
            problems.append(
                f"{source}:{line}: vendors.{name}: no catalogue preset '{preset}', so "
                "base_url and dialect are required"
            )
    names = set(seen)
    for rm, target in cfg.router.pool.items():
        if target not in names:
            line = _line_of(root, ("router", "pool", rm))
            problems.append(
                f"{source}:{line}: router.pool.{rm}: '{target}' is not a model in models:"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def _self_hosted_problems(
    cfg: Config, d: DeploymentConfig, root: yaml.Node | None, source: str, at: tuple[Any, ...]
) -> list[str]:
    """A self-hosted deployment's energy cost needs its region's power price and energy."""
    if not d.self_hosted:
        return []
    field = ".".join(str(p) for p in at)
    if d.region is None:
        line = _line_of(root, (*at, "self_hosted"))
        return [
            f"{source}:{line}: {field}.self_hosted: a self-hosted deployment needs a region: "
            "(one under regions: with usd_per_kwh and kwh_per_m_tokens)"
        ]
    region = cfg.regions.get(d.region)
    if region is None or region.kwh_per_m_tokens is None:
        line = _line_of(root, (*at, "region"))
        what = "is not under regions:" if region is None else "has no kwh_per_m_tokens"
        return [
            f"{source}:{line}: {field}.region: region '{d.region}' {what}; a self-hosted "
            "deployment's energy cost needs its usd_per_kwh and kwh_per_m_tokens"
        ]
    return []


def _check_prices(entries: list[dict[str, Any]], root: yaml.Node | None, source: str) -> None:
    """The config's own price entries, validated as the catalogue's are, with their lines.

    A price must be a quoted string: an unquoted ``0.3`` is a YAML float, and a float
    never becomes money (the message says to quote it)."""
    from tokenomy.billing.catalog import PricingError
    from tokenomy.billing.price_schema import parse_models

    problems = []
    for i, entry in enumerate(entries):
        try:
            parse_models([entry])
        except ValidationError as e:
            problems.append(_describe(e, root, source, ("prices", i)))
        except PricingError as e:
            problems.append(f"{source}:{_line_of(root, ('prices', i))}: prices.{i}: {e}")
    if problems:
        raise ConfigError("\n".join(problems))
