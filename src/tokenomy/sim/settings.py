"""The simulator's knobs: timing, output length, fault rates and per-model usage styles."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

#: Where usage goes and which fields it has, per upstream model (see ``usage.py``).
USAGE_STYLES = frozenset({"openai", "inline", "deepseek", "none"})

DEFAULT_MODELS = (
    "sim-gpt",
    "sim-claude",
    "sim-embed",
    "deepseek-chat",
    "deepseek-reasoner",
)


@dataclass
class SimSettings:
    """Everything that shapes the simulator's answers; defaults make tests fast.

    ``usage_styles`` maps a model-name glob (``fnmatch``, case-sensitive) to one of
    ``USAGE_STYLES``; the first matching glob wins and unmatched models use ``"openai"``.
    ``tokens_per_second == 0`` streams as fast as possible. Rates are probabilities per
    request, drawn from one RNG seeded with ``seed`` so a run replays exactly.
    """

    seed: int = 0
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    default_output_tokens: int = 64
    embedding_dim: int = 256
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    disconnect_rate: float = 0.0
    disconnect_after_chunks: int = 3
    usage_styles: dict[str, str] = field(default_factory=dict)
    require_key: str | None = None
    #: Pace of the "slow" fault (and of ``sim-slow`` models): a stream that trickles.
    slow_tokens_per_second: float = 20.0
    #: Words per streamed chunk; real vendors send about one token per chunk.
    stream_chunk_words: int = 1
    #: Models listed by ``GET /v1/models``; any model name is accepted in requests.
    models: tuple[str, ...] = DEFAULT_MODELS
    #: Prompts of at least this many tokens are "cached" when seen again.
    cache_min_tokens: int = 1024
    #: How many prompt hashes the prompt-cache simulation remembers.
    cache_entries: int = 4096
    #: How long a deployment's prompt cache stays warm after a use (5 minutes, as
    #: Anthropic's and OpenAI's default caches); a request may ask for longer.
    cache_ttl_s: float = 300.0
    #: Render time of a simulated video (``POST /v1/videos``), per second of output.
    video_ms_per_second: float = 200.0

    def __post_init__(self) -> None:
        bad = {g: s for g, s in self.usage_styles.items() if s not in USAGE_STYLES}
        if bad:
            raise ValueError(f"unknown usage styles {bad}; choose from {sorted(USAGE_STYLES)}")
        if self.default_output_tokens < 1 or self.embedding_dim < 1:
            raise ValueError("default_output_tokens and embedding_dim must be positive")
        if self.tokens_per_second < 0 or self.slow_tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be >= 0 and slow_tokens_per_second > 0")
        if self.stream_chunk_words < 1:
            raise ValueError("stream_chunk_words must be positive")
        rates = (self.error_rate, self.rate_limit_rate, self.timeout_rate, self.disconnect_rate)
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be non-negative and sum to at most 1")

    def usage_style(self, model: str) -> str:
        """The usage style for ``model``: the first matching glob's, else ``"openai"``."""
        for pattern, style in self.usage_styles.items():
            if fnmatchcase(model, pattern):
                return style
        return "openai"
