"""OpenAI's Responses API as chat completions: the request in, the answer and stream out.

Every vendor speaks chat completions here (Anthropic's Messages through the existing
chat translation), so a Responses call is served as the chat call it amounts to: its
input items become chat messages, its function tools chat tools, ``text.format`` a
``response_format``; the chat answer (or stream) becomes a Response object (or the
Responses stream's semantic events). Pure: no I/O, no clock beyond ids and timestamps.
"""

from __future__ import annotations

import time
from typing import Any

from tokenomy.core.errors import InvalidRequest
from tokenomy.core.ids import stamped_id as new_id

JSON = dict[str, Any]

#: Request fields passed on to the chat call unchanged.
_PASSED = ("temperature", "top_p", "parallel_tool_calls", "service_tier", "user", "provider")
#: Request fields the gateway cannot honour: refused, never silently dropped.
_UNSUPPORTED = ("background", "conversation", "prompt")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


# --- request --------------------------------------------------------------------------------


def input_items(value: Any) -> list[JSON]:
    """The request's ``input`` as a list of items, each with an id (as input_items lists
    them); a string is one user message."""
    if isinstance(value, str):
        return [_message_item("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input")
    items: list[JSON] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{param}' must be an object.", param)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            items.append(_input_message(item, param))
        elif kind == "function_call":
            for f in ("call_id", "name", "arguments"):
                if not isinstance(item.get(f), str):
                    raise _bad(f"'{param}.{f}' must be a string.", f"{param}.{f}")
            items.append({"id": item.get("id") or new_id("fc_"), "status": "completed", **item})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"'{param}.call_id' must be a string.", f"{param}.call_id")
            out = item.get("output")
            if not isinstance(out, str | list):
                raise _bad(f"'{param}.output' must be a string or an array.", f"{param}.output")
            if isinstance(out, list):
                _text_only_output(out, f"{param}.output")
            items.append({"id": item.get("id") or new_id("fco_"), "status": "completed", **item})
        elif kind == "reasoning":
            items.append(item)  # a prior turn's reasoning: kept for the record, not re-sent
        else:
            raise _bad(
                f"'{param}.type' {kind!r} is not supported here: use message, function_call "
                "or function_call_output items.",
                f"{param}.type",
            )
    return items


def _text_only_output(parts: list[Any], param: str) -> None:
    """A tool's output goes on as a chat tool message, which carries text only: any other
    part would be lost on the way, so it is refused by name."""
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text") or not isinstance(part.get("text"), str):
            raise _bad(
                f"'{param}[{j}]' of type {kind!r} cannot be sent on: a function_call_output "
                "reaches the model as a chat tool message, which carries only input_text.",
                f"{param}[{j}]",
            )


def _message_item(role: str, content: list[JSON]) -> JSON:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }


def _input_message(item: JSON, param: str) -> JSON:
    role = item.get("role")
    if role not in _ROLES:
        raise _bad(
            f"'{param}.role' must be one of user, assistant, system or developer.",
            f"{param}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        parts: list[JSON] = [{"type": kind, "text": content}]
    elif isinstance(content, list):
        parts = [_input_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise _bad(f"'{param}.content' must be a string or an array.", f"{param}.content")
    out = _message_item(str(role), parts)
    if isinstance(item.get("id"), str):
        out["id"] = item["id"]
    return out


def _input_part(part: Any, param: str) -> JSON:
    if not isinstance(part, dict):
        raise _bad(f"'{param}' must be an object.", param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "refusal"):
        field = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(field), str):
            raise _bad(f"'{param}.{field}' must be a string.", f"{param}.{field}")
        return part
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise _bad(
                f"'{param}.image_url' must be a URL or data URL (file ids are not supported).",
                f"{param}.image_url",
            )
        return part
    raise _bad(
        f"'{param}.type' {kind!r} is not supported here: use input_text or input_image.",
        f"{param}.type",
    )


def items_to_messages(items: list[JSON], sources: list[str] | None = None) -> list[JSON]:
    """Input or output items as chat messages: consecutive function calls join one
    assistant turn (with the text before them), their outputs become tool messages.
    ``sources`` gets, for each message made, the input item it came from (``input[i]``)."""
    messages: list[JSON] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if sources is not None and kind in ("message", "function_call_output"):
            sources.append(f"input[{i}]")
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                if sources is not None:
                    sources.append(f"input[{i}]")
        elif kind == "function_call_output":
            out = item["output"]
            if isinstance(out, list):
                out = "".join(p.get("text", "") for p in out if isinstance(p, dict))
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": out})
    return messages


def _chat_message(item: JSON) -> JSON:
    role = _ROLES[item["role"]]
    parts: list[JSON] = []
    for p in item["content"]:
        if p["type"] == "input_image":
            url: JSON = {"url": p["image_url"]}
            if p.get("detail"):
                url["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": url})
        else:
            parts.append({"type": "text", "text": p.get("text", p.get("refusal", ""))})
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def chat_request(
    body: JSON, context: list[JSON], items: list[JSON], sources: list[str] | None = None
) -> JSON:
    """The chat-completions body of a Responses request: instructions, the prior
    context (a chained call re-sends it whole), then this request's input. ``sources``
    gets, per chat message, the request field it came from (to name it in errors)."""
    for f in _UNSUPPORTED:
        if body.get(f):
            raise _bad(f"'{f}' is not supported by this gateway.", f)
    messages: list[JSON] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    messages += context
    if sources is not None:
        sources += ["instructions"] * (len(messages) - len(context))
        sources += ["previous_response_id"] * len(context)
    messages += items_to_messages(items, sources)
    out: JSON = {"model": body["model"], "messages": messages}
    for f in _PASSED:
        if body.get(f) is not None:
            out[f] = body[f]
    if body.get("safety_identifier") is not None:
        # The end user, as a chat call names it; safety_identifier first, as for chat.
        out["user"] = body["safety_identifier"]
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["tool_choice"] = choice
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad("'reasoning' must be an object.", "reasoning")
    if reasoning and reasoning.get("effort"):
        out["reasoning_effort"] = reasoning["effort"]
    cap = body.get("max_output_tokens")
    if cap is not None:
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise _bad("'max_output_tokens' must be a positive integer.", "max_output_tokens")
        # Reasoning models take only max_completion_tokens; most other vendors max_tokens.
        out["max_completion_tokens" if "reasoning_effort" in out else "max_tokens"] = cap
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _tools(tools: Any) -> list[JSON]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array.", "tools")
    out: list[JSON] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise _bad(
                f"'tools[{i}].type' {kind!r} is not supported here: only function tools are.",
                f"tools[{i}].type",
            )
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name")
        fn: JSON = {"name": t["name"]}
        for f in ("description", "parameters", "strict"):
            if t.get(f) is not None:
                fn[f] = t[f]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise _bad("'tool_choice.name' must be a string.", "tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("'tool_choice' must be auto, none, required or a function.", "tool_choice")


def _response_format(text: Any) -> JSON | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or (fmt is not None and not isinstance(fmt, dict)):
        raise _bad("'text.format' must be an object.", "text.format")
    kind = fmt.get("type") if fmt else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert fmt is not None
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("'text.format' json_schema needs a name and a schema.", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("'text.format.type' must be text, json_object or json_schema.", "text.format.type")


# --- answer ---------------------------------------------------------------------------------


def response_object(
    body: JSON, response_id: str, model: str, *, created_at: int | None = None
) -> JSON:
    """A Response in progress, echoing the request's settings (as OpenAI's does)."""
    text = body.get("text")
    text = text if isinstance(text, dict) else {}
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def responses_usage(chat_usage: JSON | None, cost: Any = None) -> JSON | None:
    """A chat usage object in the Responses shape (plus ``cost`` when priced)."""
    if chat_usage is None:
        return None
    pdet = chat_usage.get("prompt_tokens_details") or {}
    cdet = chat_usage.get("completion_tokens_details") or {}
    inp, out = chat_usage.get("prompt_tokens", 0), chat_usage.get("completion_tokens", 0)
    usage: JSON = {
        "input_tokens": inp,
        "input_tokens_details": {
            "cached_tokens": pdet.get("cached_tokens", 0),
            # Prompt-cache writes (Anthropic's); the SDK's usage type requires the field.
            "cache_write_tokens": pdet.get("cache_write_tokens", 0),
        },
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": cdet.get("reasoning_tokens", 0)},
        "total_tokens": inp + out,
    }
    if cost is not None:
        usage["cost"] = cost
    return usage


def finish(resp: JSON, finish_reason: Any) -> None:
    """Set a Response's final status from the chat finish reason."""
    if finish_reason == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "content_filter"}
    else:
        resp["status"] = "completed"


def text_item(item_id: str, text: str, status: str = "completed") -> JSON:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}] if text else [],
    }


def call_item(item_id: str, call_id: str, name: str, args: str, status: str) -> JSON:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": args,
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> JSON:
    """The model's own reasoning (DeepSeek's ``reasoning_content``, Anthropic's thinking)
    as a Responses reasoning item: raw reasoning text, no summary."""
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if text else [],
    }


def reasoning_of(msg: JSON) -> str | None:
    """A chat message's or delta's reasoning text, if it has any."""
    for key in ("reasoning_content", "reasoning"):
        v = msg.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def chat_answer_to_output(answer: JSON) -> tuple[list[JSON], Any]:
    """The output items of a whole chat answer (its first choice), and its finish reason."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[JSON] = []
    thought = reasoning_of(msg)
    if thought is not None:
        output.append(reasoning_item(new_id("rs_"), thought))
    content = msg.get("content")
    if isinstance(content, str) and content:
        output.append(text_item(new_id("msg_"), content))
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        output.append(
            call_item(
                new_id("fc_"),
                tc.get("id") or new_id("call_"),
                fn.get("name", ""),
                fn.get("arguments") or "",
                "completed",
            )
        )
    if not any(o["type"] != "reasoning" for o in output):
        output.append(text_item(new_id("msg_"), ""))
    return output, choice.get("finish_reason")


def input_param(param: str | None, sources: list[str]) -> str | None:
    """A chat body's parameter (``messages[2].content[1]``) as the Responses request's
    (``input[1].content[1]``): an error names what the client wrote."""
    if param is None or not param.startswith("messages["):
        return param
    index, _, rest = param[len("messages[") :].partition("]")
    if not index.isdigit() or int(index) >= len(sources):
        return param
    source = sources[int(index)]
    return source + rest if source.startswith("input[") else source
