"""The OpenAI chat-completions protocol, spoken by most vendors (their presets are data)."""

from __future__ import annotations

from typing import Any

from tokenomy.core.registry import Deployment
from tokenomy.providers.http import HttpProvider

_PATHS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}


class OpenAICompatProvider(HttpProvider):
    dialect = "openai"

    def path_for(self, endpoint: str) -> str:
        return _PATHS[endpoint]

    def prepare(self, deployment: Deployment, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        out = {**body, "model": deployment.upstream_model}
        # A Responses request (its "input") gets usage on response.completed unasked, and
        # the API refuses stream_options.include_usage.
        if stream and self.vendor.stream_usage and "input" not in body:
            # Always ask for usage so every stream is billed from the vendor's own count;
            # the extra chunk is stripped later if the client did not ask for it.
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            out["stream_options"] = opts
        return out
