"""OpenAI-dialect streams (chat and legacy completions): chunks, usage placement, [DONE]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenomy.sim.sse import DONE, Event, data_frame


@dataclass(frozen=True, slots=True)
class Delta:
    """One chunk of one choice: its fields, finish reason, and tokens generated before it."""

    fields: dict[str, Any]
    finish: str | None
    tokens: float


def group_pieces(pieces: Sequence[str], size: int) -> list[str]:
    """Join every ``size`` consecutive pieces into one chunk's text."""
    if size <= 1:
        return list(pieces)
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]


def chunk_events(
    head: dict[str, Any],
    choices: Sequence[Sequence[Delta]],
    style: str,
    include_usage: bool,
    usage: dict[str, Any] | None,
    *,
    nest: str | None,
) -> list[Event]:
    """Frame every choice's deltas as chunks (choice after choice), then usage and [DONE].

    ``nest`` is "delta" for chat chunks and None for legacy ones, whose fields sit directly
    in the choice. Usage goes where the vendor ``style`` puts it (see ``usage.py``).
    """
    null_usage = include_usage and style != "none"
    inline = style == "inline" and usage is not None
    events: list[Event] = []
    last_choice = len(choices) - 1
    for index, deltas in enumerate(choices):
        last_delta = len(deltas) - 1
        for k, delta in enumerate(deltas):
            if nest is None:
                choice = {"index": index, **delta.fields}
            else:
                choice = {"index": index, nest: delta.fields}
            choice["logprobs"] = None
            choice["finish_reason"] = delta.finish
            chunk = {**head, "choices": [choice]}
            if inline and index == last_choice and k == last_delta:
                chunk["usage"] = usage
            elif null_usage:
                chunk["usage"] = None
            events.append((data_frame(chunk), delta.tokens))
    if include_usage and usage is not None and not inline:
        events.append((data_frame({**head, "choices": [], "usage": usage}), 0.0))
    events.append((DONE, 0.0))
    return events
