"""Request bodies: OpenAI Chat Completions <-> Anthropic Messages, as plain dicts.

What does not survive the trip (the dialects disagree and no faithful mapping exists):

* OpenAI -> Anthropic: ``temperature`` above 1 is clamped to 1 (Anthropic's range is 0-1);
  ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``seed``, ``store``,
  ``service_tier``, ``prediction`` and message ``name`` are dropped; system and developer
  messages move to the top-level ``system`` wherever they stood; ``response_format`` becomes
  an instruction appended to the system prompt (best effort: Claude is asked, not forced,
  to answer in JSON); ``reasoning_effort`` becomes an extended-thinking budget only where
  Anthropic allows thinking (see :func:`_anthropic_thinking`); assistant
  ``reasoning_content`` is dropped because Anthropic rejects unsigned thinking.
* Anthropic -> OpenAI: ``cache_control`` breakpoints, tool_result ``is_error``, thinking
  signatures and redacted thinking are dropped; system text blocks are joined into one
  system message; ``top_k`` passes through (outside OpenAI's schema, but accepted by most
  OpenAI-dialect vendors); extended thinking becomes ``reasoning_effort``.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from tokenomy.core.errors import InvalidRequest
from tokenomy.providers.translate_content import JSON
from tokenomy.providers.translate_messages import (
    anthropic_messages_to_openai,
    openai_messages_to_anthropic,
)

# Thinking budgets for OpenAI's reasoning_effort levels, and the reverse thresholds.
_EFFORT_BUDGET = MappingProxyType(
    {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
)
_MIN_THINKING_BUDGET = 1024  # Anthropic's documented minimum budget_tokens

JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: "
    "no prose and no code fences before or after it."
)


def openai_request_to_anthropic(
    body: dict[str, Any], *, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """An OpenAI chat-completions request body as an Anthropic Messages request body.

    ``default_max_tokens`` fills Anthropic's required ``max_tokens`` when the client gave
    neither ``max_completion_tokens`` nor ``max_tokens``.
    """
    _reject_unsupported(body)
    system, messages = openai_messages_to_anthropic(body.get("messages"))
    system += _json_mode_instruction(body.get("response_format"))
    out: JSON = {"model": body["model"]} if "model" in body else {}
    out["messages"] = messages
    out["max_tokens"] = _max_tokens(body, default_max_tokens)
    if system:
        only = system[0]
        out["system"] = (
            only["text"] if len(system) == 1 and only.keys() == {"type", "text"} else system
        )
    out.update(_anthropic_sampling(body))
    out.update(_anthropic_tools(body))
    thinking = _anthropic_thinking(body.get("reasoning_effort"), out)
    if thinking is not None:
        out["thinking"] = thinking
    return out


def _reject_unsupported(body: JSON) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("n > 1 is not supported by this model's provider", param="n")
    if body.get("logprobs"):
        raise InvalidRequest(
            "logprobs are not supported by this model's provider", param="logprobs"
        )
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise InvalidRequest("only text output is supported by this provider", param="modalities")


def _max_tokens(body: JSON, default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{key} must be a positive integer", param=key)
        return value
    return default


def _anthropic_sampling(body: JSON) -> JSON:
    out: JSON = {}
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidRequest("temperature must be a number", param="temperature")
        out["temperature"] = min(temperature, 1)
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    sequences = [s for s in sequences if isinstance(s, str) and s]
    if sequences:
        out["stop_sequences"] = sequences
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if "stream" in body:
        out["stream"] = bool(body["stream"])
    return out


def _anthropic_tools(body: JSON) -> JSON:
    tools = body.get("tools")
    if not tools:
        return {}  # tool_choice without tools means nothing to Anthropic
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out: JSON = {"tools": [_anthropic_tool(t, param=f"tools[{i}]") for i, t in enumerate(tools)]}
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _anthropic_tool(tool: Any, *, param: str) -> JSON:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or tool.get("type") != "function" or not fn.get("name"):
        raise InvalidRequest("only function tools with a name are supported", param=param)
    out: JSON = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _anthropic_tool_choice(choice: Any) -> JSON | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and choice.get("type") == "function" and fn.get("name"):
        return {"type": "tool", "name": fn["name"]}
    raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")


def _json_mode_instruction(fmt: Any) -> list[JSON]:
    """response_format as a system instruction: Anthropic has no JSON mode to switch on."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return []
    if kind == "json_object":
        return [{"type": "text", "text": JSON_OBJECT_INSTRUCTION}]
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(spec, dict):
        schema = json.dumps(spec.get("schema", {}), ensure_ascii=False)
        text = (
            f"{JSON_OBJECT_INSTRUCTION} It must conform to this JSON Schema"
            f" (named {spec.get('name', 'response')!r}):\n{schema}"
        )
        return [{"type": "text", "text": text}]
    raise InvalidRequest(f"response_format {kind!r} is not supported", param="response_format")


def _anthropic_thinking(effort: Any, out: JSON) -> JSON | None:
    """reasoning_effort as Anthropic extended thinking, or None where thinking is not allowed.

    Anthropic refuses thinking with a forced tool choice, a temperature other than 1, top_k,
    top_p below 0.95, a budget under 1024 or not below max_tokens, and when the last
    assistant tool call comes without its signed thinking; in those cases the request goes
    without thinking rather than failing.
    """
    if effort is None or effort == "none":
        return None
    if effort not in _EFFORT_BUDGET:
        raise InvalidRequest(
            f"reasoning_effort {effort!r} is not supported", param="reasoning_effort"
        )
    budget = min(_EFFORT_BUDGET[effort], out["max_tokens"] - 1)
    conflicts = (
        budget < _MIN_THINKING_BUDGET
        or out.get("tool_choice", {}).get("type") in ("any", "tool")
        or out.get("temperature", 1) != 1
        or "top_k" in out
        or out.get("top_p", 1) < 0.95
        or _unsigned_tool_turn(out["messages"])
    )
    return None if conflicts else {"type": "enabled", "budget_tokens": budget}


def _unsigned_tool_turn(messages: list[JSON]) -> bool:
    for msg in reversed(messages):
        if msg["role"] != "assistant":
            continue
        blocks = msg["content"] if isinstance(msg["content"], list) else []
        uses_tools = any(b["type"] == "tool_use" for b in blocks)
        signed = bool(blocks) and blocks[0]["type"] in ("thinking", "redacted_thinking")
        return uses_tools and not signed
    return False


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request body as an OpenAI chat-completions request body.

    Keeps ``stream``; a streaming request also asks for the final usage chunk
    (``stream_options.include_usage``) so the gateway can meter it.
    """
    out: JSON = {"model": body["model"]} if "model" in body else {}
    out["messages"] = anthropic_messages_to_openai(body.get("system"), body.get("messages"))
    for key in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    if "stream" in body:
        out["stream"] = bool(body["stream"])
        if out["stream"]:
            out["stream_options"] = {"include_usage": True}
    out.update(_openai_tools(body))
    effort = _openai_reasoning_effort(body.get("thinking"))
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


def _openai_tools(body: JSON) -> JSON:
    tools = body.get("tools")
    if not tools:
        return {}
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out: JSON = {"tools": [_openai_tool(t, param=f"tools[{i}]") for i, t in enumerate(tools)]}
    choice = body.get("tool_choice")
    if choice is None:
        return out
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none", "any"):
        out["tool_choice"] = "required" if kind == "any" else kind
    elif kind == "tool" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _openai_tool(tool: Any, *, param: str) -> JSON:
    if not isinstance(tool, dict) or not tool.get("name"):
        raise InvalidRequest("a tool needs a name", param=param)
    if tool.get("type") not in (None, "custom"):
        # Server tools (web search, code execution, ...) run inside Anthropic only.
        raise InvalidRequest(f"tool type {tool['type']!r} is not supported here", param=param)
    fn: JSON = {"name": tool["name"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def _openai_reasoning_effort(thinking: Any) -> str | None:
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None  # disabled, or adaptive: leave the vendor's default
    budget = thinking.get("budget_tokens")
    budget = budget if isinstance(budget, int) else _EFFORT_BUDGET["medium"]
    if budget < _EFFORT_BUDGET["medium"]:
        return "low"
    return "medium" if budget < _EFFORT_BUDGET["high"] else "high"
