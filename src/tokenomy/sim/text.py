"""Deterministic filler text: seeded words, fitted to a token budget, cut at stop sequences."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence

#: Every generated answer starts with this, so nobody mistakes it for a real model's.
MARKER = "[simulated]"

# Common, mostly one-token English words: the output looks like prose and counts stably.
# fmt: off
WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "has", "been",
    "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "year", "way",
    "day", "man", "thing", "woman", "life", "child", "world", "school", "state", "family",
    "student", "group", "country", "problem", "hand", "part", "place", "case", "week", "company",
    "system", "program", "question", "work", "government", "number", "night", "point", "home",
    "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study",
    "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service",
    "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city",
    "community", "name", "president", "team", "minute", "idea", "kid", "body", "information",
    "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art",
    "war", "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy",
    "moment", "air", "teacher", "force", "education", "good", "new", "first", "last", "long",
    "great", "little", "own", "other", "old", "big", "high", "different", "small", "large",
    "next", "early", "young", "important", "few", "public", "bad", "same", "able", "say", "get",
    "make", "go", "know", "take", "see", "come", "think", "look", "want", "give", "use", "find",
    "tell", "ask", "seem", "feel", "try", "leave", "call", "keep", "let", "begin", "help", "talk",
    "turn", "start", "show", "hear", "play", "run", "move", "like", "live", "believe", "hold",
    "bring", "happen", "write", "provide", "sit", "stand", "lose", "pay", "meet", "include",
    "continue", "set", "learn", "lead", "understand", "watch", "follow", "stop", "create",
    "speak", "read", "allow", "add", "spend", "grow", "open", "walk", "win", "offer", "remember",
    "love", "consider", "appear", "buy", "wait", "serve", "die", "send", "expect", "build",
    "stay", "fall", "cut", "reach", "river", "stone", "light", "cloud", "garden", "bridge",
    "signal", "market", "token", "price", "ledger", "budget", "route",
)
# fmt: on

_PIECES = re.compile(r"\s*\S+|\s+")
_SENTENCE_MIN, _SENTENCE_MAX = 5, 14

Count = Callable[[str], int]


def seed_for(*parts: str | bytes | int) -> int:
    """A 64-bit PRNG seed from ``parts``, stable across processes (unlike ``hash()``)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "big")


def words(seed: int, count: int) -> list[str]:
    """``count`` pieces of prose, each a word with its leading space, in sentences."""
    rng = random.Random(seed)
    out = [" " + w for w in rng.choices(WORDS, k=count)]
    end = rng.randint(_SENTENCE_MIN, _SENTENCE_MAX)
    while end < count:
        out[end - 1] += "."
        out[end] = out[end].title()
        end += rng.randint(_SENTENCE_MIN, _SENTENCE_MAX)
    return out


def fit(count: Count, head: str, pieces: Sequence[str], tail: str, cap: int) -> tuple[str, int]:
    """The longest ``head + pieces[:k] + tail`` of at most ``cap`` tokens, and its count.

    Counting is not additive (tokenizers merge across boundaries), so candidate lengths are
    counted whole; interpolation between the bounds finds the answer in a few counts. If even
    ``head + tail`` is too long, its characters are cut, as a real model hitting
    ``max_tokens`` mid-word would.
    """
    cap = max(cap, 0)
    empty = head + tail
    c_lo = count(empty)
    if c_lo > cap:
        return _cut_chars(count, empty, cap)
    full = head + "".join(pieces) + tail
    c_hi = count(full)
    if c_hi <= cap:
        return full, c_hi
    lo, hi = 0, len(pieces)
    best = empty
    while hi - lo > 1 and c_lo < cap:
        span = max(1, c_hi - c_lo)
        k = min(hi - 1, max(lo + 1, lo + (cap - c_lo) * (hi - lo) // span))
        text = head + "".join(pieces[:k]) + tail
        c = count(text)
        if c <= cap:
            lo, c_lo, best = k, c, text
        else:
            hi, c_hi = k, c
    return best, c_lo


def _cut_chars(count: Count, text: str, cap: int) -> tuple[str, int]:
    lo, hi = 0, len(text)  # text[:lo] fits (the empty string is taken to), text[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[:mid]) <= cap:
            lo = mid
        else:
            hi = mid
    return text[:lo], count(text[:lo])


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """``text`` up to (not including) the earliest stop sequence, and which one matched."""
    best, matched = len(text), None
    for stop in stops:
        i = text.find(stop) if stop else -1
        if 0 <= i < best:
            best, matched = i, stop
    return text[:best], matched


def split_pieces(text: str) -> list[str]:
    """``text`` as streamable pieces (each word with its leading space); they join to ``text``."""
    return _PIECES.findall(text)


def split_even(text: str, size: int) -> list[str]:
    """``text`` in pieces of ``size`` characters (tool-call arguments are streamed this way)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
