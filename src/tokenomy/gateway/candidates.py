"""Which deployments may serve a call, best first: the route's, less those lacking a
capability the call needs, in the router's order. Worked out once per call (the ledger's
hold and the pipeline's attempts both ask)."""

from __future__ import annotations

from typing import Any

from tokenomy.core.call import CHAT_BODIES, IMAGE_PARTS, Call
from tokenomy.core.errors import InvalidRequest
from tokenomy.core.registry import Deployment
from tokenomy.routing.router import Router

EMBEDDINGS = "embeddings"
_ENDPOINT_NAMES = {"chat": "chat completions", "messages": "messages", "responses": "responses"}


class Candidates:
    """A call's candidate deployments (callable: ``candidates(call)``)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def __call__(self, call: Call) -> list[Deployment]:
        cached = call.candidates
        if cached is not None:
            return list(cached)
        assert call.route is not None
        needs = required_capabilities(call)
        openai_only = call.endpoint in ("completions", "embeddings")
        pool = self.router.ranked(call, needs)
        embeds = call.endpoint == EMBEDDINGS
        # An embeddings deployment answers embeddings only, and only it answers them.
        deps = [
            d
            for d in pool
            if not (openai_only and d.vendor.dialect != "openai")
            and (EMBEDDINGS in d.capabilities) == embeds
        ]
        if not deps:
            what = ", ".join(sorted(needs)) or _ENDPOINT_NAMES.get(call.endpoint, call.endpoint)
            raise InvalidRequest(
                f"No deployment of the model '{call.model}' supports {what}.", param="model"
            )
        call.candidates = tuple(deps)
        return deps


def required_capabilities(call: Call) -> frozenset[str]:
    b = call.body
    needs = set()
    if b.get("tools") or b.get("functions"):
        needs.add("tools")
    rf = b.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    if (call.endpoint in CHAT_BODIES or call.endpoint == "messages") and _has_image(
        b.get("messages") or ()
    ):
        needs.add("vision")
    return frozenset(needs)


def _has_image(messages: Any) -> bool:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in IMAGE_PARTS:
                    return True
    return False
