"""The state of one request as it moves through the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from tokenomy.core.ids import UniqueIds
from tokenomy.core.keys import ApiKey
from tokenomy.core.registry import Deployment, ModelRoute
from tokenomy.core.usage import Usage

_REQUEST_IDS = UniqueIds("req_", width=12)


#: Content part types that carry an image, in either dialect.
IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


#: Endpoints whose call body is a chat-completions request (a Responses call is served
#: as the chat call it amounts to).
CHAT_BODIES = frozenset({"chat", "responses"})


T = TypeVar("T")


class CallKey(Generic[T]):
    """A typed key for state that a layer above this one keeps on a call (the ledger's
    hold and charge, a rate-limit ticket): the owning module defines it next to its type,
    so every reader and writer of the value is checked against that type. State whose
    type lives here is a field of :class:`Call` instead."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"CallKey({self.name!r})"


class Stage(Protocol):
    """A step around the vendor call, such as admission control or a ledger hold.

    ``before`` may raise a GatewayError to refuse the call; ``after`` runs exactly once for
    every call whose ``before`` returned, once usage is known (or the call failed).
    """

    async def before(self, call: Call) -> None: ...

    async def after(self, call: Call) -> None: ...


class QueueSlot(Protocol):
    """A place held in a deployment's fair queue, given back when the call ends."""

    def release(self) -> None: ...


@dataclass(slots=True)
class CacheAffinity:
    """Where a call's prompt cache is likely warm (see ``tokenomy.routing.affinity``).

    ``key`` names the calls that share a cache (one task, or one long prompt prefix);
    ``remembered`` is the deployment that served the key's last call, its cache warm until
    ``warm_until`` (epoch seconds); ``decision`` is what routing made of it, sent as the
    ``x-tokenomy-affinity`` header, and ``target`` the deployment it put first.
    """

    key: str
    #: The cache lifetime the request asked for (Anthropic's one-hour ``cache_control``);
    #: None: the serving vendor's documented one, else the default.
    ttl_s: float | None = None
    remembered: str | None = None
    warm_until: float = 0.0
    decision: str = "miss"
    target: str | None = None

    def header(self, deployment_id: str) -> str:
        """The header value for an attempt on ``deployment_id``."""
        if self.decision == "hit" and deployment_id != self.target:
            return "yielded:fallback"  # the warm deployment failed; another served
        return self.decision


def _count(v: Any) -> int:
    """A positive count from a client field, 1 when absent (validated at the edge)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 1 else 1


def named_task(call: Call) -> Any:
    """The task the call names (X-Tokenomy-Task, else the body's metadata.task_id), if any:
    not yet checked, any JSON value (the ledger stage checks it and finds the task)."""
    name: Any = call.task_name
    if name is None:
        meta = call.body.get("metadata")
        name = meta.get("task_id") if isinstance(meta, dict) else None
    return name


def new_request_id() -> str:
    """Unique across processes and restarts; ids from one process sort in arrival order."""
    return _REQUEST_IDS.next()


@dataclass(slots=True)
class Call:
    """One client request: what was asked, and what happened to it.

    ``endpoint`` is the client's operation (chat, messages, completions, embeddings) and
    ``dialect`` the protocol it spoke (openai or anthropic).
    """

    endpoint: str
    dialect: str
    body: dict[str, Any]
    model: str
    stream: bool
    key: ApiKey
    route: ModelRoute | None = None
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    ts_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: The client asked for a usage chunk at the end of an OpenAI stream.
    wants_usage: bool = False
    deployment: Deployment | None = None
    attempts: int = 0
    first_token_at: float | None = None
    usage: Usage | None = None
    #: Text the upstream produced, kept only until usage is known (for local counting).
    output_text: list[str] = field(default_factory=list)
    status: str = "ok"
    http_status: int = 200
    error_code: str | None = None
    finished: bool = False
    #: The model serving a call whose route stands for several (``model: "auto"``).
    served_as: str | None = None
    #: Cache-aware routing's state for this call (None: affinity does not apply).
    affinity: CacheAffinity | None = None
    #: A Responses call's own request (its chain expanded), for a deployment whose vendor
    #: speaks the Responses API: sent as is instead of ``body`` (see responses_native).
    native: dict[str, Any] | None = None
    # What the stages hand each other (set by the HTTP edge or the stage named).
    #: The task the call names (X-Tokenomy-Task, or the body's metadata.task_id)...
    task_name: str | None = None
    #: ...and the task it was found to belong to (its usage record's task_id).
    task_id: str | None = None
    #: The most it may wait in a queue (X-Tokenomy-Max-Wait, seconds).
    max_wait_s: float | None = None
    #: Seconds a latency-tolerant call may take (X-Tokenomy-Deadline).
    deadline_s: float | None = None
    #: Model "auto"'s quality bar (X-Tokenomy-Min-Quality).
    min_quality: float | None = None
    #: The pipeline's deployments for it, best first (worked out once).
    candidates: tuple[Deployment, ...] | None = None
    #: The router's ranking of its route's deployments (worked out once).
    ranked: tuple[Deployment, ...] | None = None
    #: Model "auto"'s pick and fallbacks, in order: ((model name, deployments), ...).
    route_groups: tuple[tuple[str, tuple[Deployment, ...]], ...] | None = None
    #: A latency-tolerant call's placement: per deployment id, what the work would cost
    #: there (token price and energy), sent as x-tokenomy-placement.
    placement: dict[str, str] | None = None
    #: Its prompt's token bound from its bytes (worked out once: holds and limits ask).
    prompt_bound: int | None = None
    #: The rate limiter's headers for the response.
    ratelimit_headers: dict[str, str] | None = None
    #: Its place in a deployment's fair queue, while it runs.
    queue_slot: QueueSlot | None = None
    #: The stages whose ``before`` returned, in order (their ``after`` runs at the end).
    stages_passed: list[Stage] | None = None
    #: Its request span, when traces are exported (an OpenTelemetry span).
    span: Any = None
    #: State typed by the layers above (see :class:`CallKey`).
    state: dict[CallKey[Any], Any] = field(default_factory=dict)
    #: The client's output cap once read (-1: not yet; 0: none).
    _cap: int = field(default=-1, init=False, repr=False)

    def get(self, key: CallKey[T]) -> T | None:
        """The value a stage left under ``key``, if any."""
        value: T | None = self.state.get(key)
        return value

    def put(self, key: CallKey[T], value: T) -> None:
        self.state[key] = value

    def pop(self, key: CallKey[T]) -> T | None:
        value: T | None = self.state.pop(key, None)
        return value

    @property
    def public_model(self) -> str:
        """The model answers name: its own name, not an alias, a routing suffix (":floor")
        or the vendor's id for it (OpenRouter's convention); for a model chosen per request
        (``auto``), the one that served."""
        if self.served_as is not None:
            return self.served_as
        return self.route.name if self.route is not None else self.model

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @property
    def latency_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    @property
    def ttft_ms(self) -> int | None:
        if self.first_token_at is None:
            return None
        return int((self.first_token_at - self.started) * 1000)

    def requested_max_output(self) -> int | None:
        """The client's own output cap (``max_completion_tokens`` or ``max_tokens``), if any."""
        cap = self._cap
        if cap < 0:  # read once: limits, routing and the hold all ask
            got: Any = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
            ok = isinstance(got, int) and not isinstance(got, bool) and got > 0
            cap = self._cap = got if ok else 0
        return cap or None

    def choices(self) -> int:
        """How many answers the call may produce, each up to the output cap: ``n`` (the
        larger of it and ``best_of`` on legacy completions, whose candidates the vendor
        generates and bills) for each prompt."""
        b = self.body
        if self.endpoint == "messages":
            return 1  # Anthropic's Messages have no n (nor is one sent on)
        n = _count(b.get("n"))
        if self.endpoint != "completions":
            return n
        prompt = b.get("prompt")
        # A list of strings or of token lists is several prompts; a list of ints is one.
        prompts = len(prompt) if isinstance(prompt, list) and prompt else 1
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompts = 1
        return max(n, _count(b.get("best_of"))) * prompts

    def max_output_tokens(self, default: int) -> int:
        """The most output this call may produce: its own cap, else the model's, else default."""
        cap = self.requested_max_output()
        limit = self.route.max_output if self.route is not None else None
        if cap is not None:
            return min(cap, limit) if limit else cap
        return limit or default
