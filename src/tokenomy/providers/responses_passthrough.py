"""The Responses request a vendor that speaks the Responses API gets from the gateway.

The gateway keeps ``previous_response_id`` chains itself (per organisation, across
replicas and vendors), so the vendor is sent the whole conversation as input items, never
a chain id of ours, with ``store: false`` (the vendor keeps nothing a later call could
depend on). A chain is kept as chat messages (a chain may move between a vendor that
speaks the Responses API and one that does not); they are turned back into items here.
Reasoning items of earlier turns are not re-sent (the chat form keeps none), as on the
translated path. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

#: Client fields that are the gateway's, not the vendor's.
_OURS = ("previous_response_id", "provider")


def native_request(body: JSON, context: list[JSON]) -> JSON:
    """The request as the vendor gets it: the prior context (as items) before this input."""
    out = {k: v for k, v in body.items() if k not in _OURS}
    if out.get("service_tier") == "batch":  # our tier; OpenAI's API knows no such value
        del out["service_tier"]
    if context:
        inp = body["input"]
        current = [{"role": "user", "content": inp}] if isinstance(inp, str) else list(inp)
        out["input"] = messages_to_items(context) + current
    out["store"] = False
    return out


def messages_to_items(messages: list[JSON]) -> list[JSON]:
    """Chat messages as Responses input items (without ids: the vendor stores nothing)."""
    items: list[JSON] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": m.get("tool_call_id"),
                    "output": _text(m.get("content")),
                }
            )
            continue
        content = m.get("content")
        if content:
            items.append({"role": role, "content": _content(content, role)})
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": tc.get("id"),
                    "name": fn.get("name"),
                    "arguments": fn.get("arguments") or "",
                }
            )
    return items


def _content(content: Any, role: Any) -> Any:
    if isinstance(content, str):
        return content
    text = "output_text" if role == "assistant" else "input_text"
    parts: list[JSON] = []
    for p in content if isinstance(content, list) else ():
        if not isinstance(p, dict):
            continue
        if p.get("type") == "image_url":
            url = p.get("image_url") or {}
            part: JSON = {"type": "input_image", "image_url": url.get("url")}
            if url.get("detail"):
                part["detail"] = url["detail"]
            parts.append(part)
        else:
            parts.append({"type": text, "text": str(p.get("text") or "")})
    return parts


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
