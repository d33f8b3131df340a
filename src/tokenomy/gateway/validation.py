"""Cheap structural checks of client bodies, with errors that name the offending field.

Only what the gateway relies on (or what a vendor would reject with a worse message) is
checked here; everything else passes through to the vendor untouched.
"""

from __future__ import annotations

from typing import Any

from tokenomy.core.errors import InvalidRequest

_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ANTHROPIC_ROLES = frozenset({"user", "assistant"})
#: How deeply a body's arrays and objects may nest. orjson writes at most 254 levels, and a
#: body is written again (translated, wrapped) on its way to the vendor; real bodies (tool
#: schemas included) stay far below this.
MAX_DEPTH = 128


#: Bodies up to this size are first settled by counting their brackets.
_COUNT_UP_TO = 16 * 1024


def too_deep(raw: bytes, value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` (parsed from ``raw``) nests arrays and objects past ``limit``.

    A small body is settled by counting its brackets (nesting needs at least as many
    brackets as levels). A large one is walked level by level instead: counting cost
    about 0.3 ns a byte, more than parsing a 400 KB prompt, while the walk looks at each
    array and object once (fewer than orjson made) and never at a string's bytes.
    """
    if len(raw) <= _COUNT_UP_TO and raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    level: list[Any] = [value]
    for _ in range(limit):
        inner: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                inner.extend(v.values())
            elif isinstance(v, list):
                inner.extend(v)
        level = [v for v in inner if isinstance(v, dict | list)]
        if not level:
            return False
    return True


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    got = "null" if value is None else type(value).__name__
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {got}.", param=param
    )


#: The longest model name taken: the width of the ``model`` column of a usage event.
MAX_MODEL_CHARS = 200


def require_model(body: dict[str, Any]) -> str:
    """The requested model; a name the usage record could not store is refused here
    (PostgreSQL refuses a NUL byte and an over-long value, and the record with it)."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"Invalid 'model': longer than {MAX_MODEL_CHARS} characters.", param="model"
        )
    if not model.isprintable():
        raise InvalidRequest(
            "Invalid 'model': it holds a control character (NUL, line break, ...).",
            param="model",
        )
    return model


def _opt_int(body: dict[str, Any], name: str, lo: int, hi: int) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(name, "an integer", v)
    if not lo <= v <= hi:
        raise InvalidRequest(
            f"Invalid value for '{name}': {v} is not between {lo} and {hi}.", param=name
        )


def _opt_number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _type_error(name, "a number", v)
    if not lo <= v <= hi:
        raise InvalidRequest(
            f"Invalid value for '{name}': {v} is not between {lo} and {hi}.", param=name
        )


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _type_error(name, "a boolean", v)
    return v


def _messages(body: dict[str, Any], roles: frozenset[str], max_messages: int) -> list[Any]:
    msgs = body.get("messages")
    if msgs is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(msgs, list):
        raise _type_error("messages", "an array", msgs)
    if not msgs:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    if len(msgs) > max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(msgs)} is more than the limit of {max_messages}.",
            param="messages",
        )
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _type_error(f"messages[{i}]", "an object", m)
        role = m.get("role")
        if not isinstance(role, str) or role not in roles:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {role!r}; expected one of "
                + ", ".join(sorted(roles))
                + ".",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, list):
            _parts(f"messages[{i}].content", content)
        elif content is not None and not isinstance(content, str):
            raise _type_error(f"messages[{i}].content", "a string or an array", content)
    return msgs


def _parts(param: str, parts: list[Any]) -> None:
    """Content parts (or system blocks): objects, whose ``type`` is a string when given."""
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise _type_error(f"{param}[{j}]", "an object", part)
        kind = part.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _type_error(f"{param}[{j}].type", "a string", kind)


def _sampling(body: dict[str, Any], max_choices: int) -> None:
    _opt_number(body, "temperature", 0, 2)
    _opt_number(body, "top_p", 0, 1)
    _opt_number(body, "presence_penalty", -2, 2)
    _opt_number(body, "frequency_penalty", -2, 2)
    _opt_int(body, "max_tokens", 1, 10_000_000)
    _opt_int(body, "max_completion_tokens", 1, 10_000_000)
    _opt_int(body, "n", 1, max_choices)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str | list):
        raise _type_error("stop", "a string or an array of strings", stop)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)


def _stream_options(body: dict[str, Any]) -> None:
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _type_error("stream_options", "an object", opts)


def check_chat(body: dict[str, Any], max_messages: int, max_choices: int) -> bool:
    """Validate an OpenAI chat-completions body; returns whether it streams.

    ``max_choices`` bounds ``n``: every choice is held for and billed."""
    _messages(body, _OPENAI_ROLES, max_messages)
    _sampling(body, max_choices)
    stream = _opt_bool(body, "stream")
    _stream_options(body)
    rf = body.get("response_format")
    if rf is not None and not isinstance(rf, dict):
        raise _type_error("response_format", "an object", rf)
    return stream


def check_messages(body: dict[str, Any], max_messages: int) -> bool:
    """Validate an Anthropic Messages body; returns whether it streams."""
    _messages(body, _ANTHROPIC_ROLES, max_messages)
    if "max_tokens" not in body:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    _opt_int(body, "max_tokens", 1, 10_000_000)
    _opt_number(body, "temperature", 0, 1)
    _opt_number(body, "top_p", 0, 1)
    system = body.get("system")
    if isinstance(system, list):
        _parts("system", system)
    elif system is not None and not isinstance(system, str):
        raise _type_error("system", "a string or an array of text blocks", system)
    ss = body.get("stop_sequences")
    if ss is not None and not isinstance(ss, list):
        raise _type_error("stop_sequences", "an array of strings", ss)
    return _opt_bool(body, "stream")


def check_completions(body: dict[str, Any], max_choices: int) -> bool:
    """Validate a legacy completions body; returns whether it streams."""
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(prompt, str | list):
        raise _type_error("prompt", "a string or an array", prompt)
    _sampling(body, max_choices)
    _opt_int(body, "best_of", 1, max_choices)
    _stream_options(body)
    return _opt_bool(body, "stream")


def check_embeddings(body: dict[str, Any]) -> None:
    inp = body.get("input")
    if inp is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if not isinstance(inp, str | list) or (isinstance(inp, list) and not inp):
        raise _type_error("input", "a string or a non-empty array", inp)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid value for 'encoding_format': {fmt!r}; expected 'float' or 'base64'.",
            param="encoding_format",
        )
