"""The learned router: per prompt, each pool model's predicted quality and cost, and a pick.

A prompt becomes a handful of hashed features (its shape: answer options, a blank to
fill, shots, length; and the words and word pairs of its last block), read from at most
``TAIL_CHARS`` characters at its end, so a long prompt costs no more than a short one.
One linear model per pool model predicts P(answer is good) and one its cost (USD); both
are sparse look-ups in pure Python.

The pick maximises ``quality - λ·cost``. The quality bar (0–1) a request asks for is
turned into λ by a table made at training time on rows the model did not see (k-fold
cross-validation): the cheapest λ whose routed traffic reached that mean quality; a bar
between two settings mixes them over prompts. Thresholding each model's predicted quality
at the bar was tried on RouterBench's validation split and lost badly (per-prompt
predictions stay close to each model's average, so a hard cut buys the frontier model
for whole tasks at once).
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

#: Bumped when the features change: an artifact made with other features is refused.
FEATURES_VERSION = 3
#: Only the prompt's last characters are read (the question sits at the end).
TAIL_CHARS = 2000
#: Words of the last block that become features (its last ones).
MAX_WORDS = 300
HASH_BITS = 18
_MASK = (1 << HASH_BITS) - 1
_WORD = re.compile(r"[a-z0-9]+")
_OPTION = re.compile(r"^\(?([A-Ea-e1-5])[).:]\s", re.M)
DEFAULT_ARTIFACT = "router-routerbench.json.gz"


def _h(s: str) -> int:
    # crc32, not hash(): the same bucket in every process (hash() is salted per process).
    return zlib.crc32(s.encode()) & _MASK


def _grams(text: str) -> tuple[list[int], list[int]]:
    """The prompt's shape buckets and its word buckets (repeated as often as they occur)."""
    tail = text[-TAIL_CHARS:]
    cut = tail.rstrip().rfind("\n\n")
    last = tail[cut + 2 :] if cut >= 0 else tail
    shape = [
        f"s:opts:{min(len(_OPTION.findall(last)), 6)}",
        f"s:blocks:{min(tail.count(chr(10) + chr(10)), 8)}",
        f"s:len:{int(math.log2(len(last) + 1))}",
    ]
    if "_" in last:
        shape.append("s:blank")
    if "answer" in last.lower():
        shape.append("s:answer")
    words = _WORD.findall(last.lower())[-MAX_WORDS:]  # the end: nearest the question
    grams = ["w:" + w for w in words]
    grams += ["b:" + a + " " + b for a, b in pairwise(words)]
    return [_h(s) for s in shape], [_h(g) for g in grams]


def _word_scale(buckets: list[int], word_weight: float) -> float:
    """What one occurrence weighs: the word features together have norm ``word_weight``."""
    counts: dict[int, int] = {}
    for b in buckets:
        counts[b] = counts.get(b, 0) + 1
    return word_weight / math.sqrt(sum(v * v for v in counts.values())) if counts else 0.0


def features(text: str, word_weight: float = 1.0) -> dict[int, float]:
    """Hashed features of a prompt (at most its last ``TAIL_CHARS`` characters are read):
    shape features weigh 1, the word features together have norm ``word_weight``."""
    shape, words = _grams(text)
    out: dict[int, float] = {}
    for b in shape:
        out[b] = out.get(b, 0.0) + 1.0
    if word_weight > 0 and words:
        scale = _word_scale(words, word_weight)
        for b in words:
            out[b] = out.get(b, 0.0) + scale
    return out


def prompt_text(body: dict[str, Any], limit: int = TAIL_CHARS) -> str:
    """The end of a request's prompt text (chat messages, Anthropic system/messages or a
    completion prompt): walked from the last message back until ``limit`` characters."""
    parts: list[str] = []
    size = 0
    msgs = body.get("messages")
    items: list[Any] = list(msgs) if isinstance(msgs, list) else []
    if isinstance(body.get("prompt"), str):
        items.append({"content": body["prompt"]})
    for m in reversed(items):
        content = m.get("content") if isinstance(m, dict) else None
        texts: Iterable[Any]
        if isinstance(content, str):
            texts = (content,)
        elif isinstance(content, list):
            texts = reversed([p.get("text") for p in content if isinstance(p, dict)])
        else:
            continue
        for t in texts:
            if isinstance(t, str) and t:
                parts.append(t[-(limit - size) :])
                size += len(parts[-1]) + 1
                if size >= limit:
                    return "\n".join(reversed(parts))
    return "\n".join(reversed(parts))


@dataclass(frozen=True, slots=True)
class Scored:
    model: str
    quality: float
    cost_usd: float
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The pick and every allowed model, best score first (the pick is ``ranked[0]``)."""

    bar: float
    lam: float
    ranked: tuple[Scored, ...]

    @property
    def chosen(self) -> Scored:
        return self.ranked[0]

    def header(self, names: dict[str, str] | None = None, limit: int = 4) -> str:
        """``model=…; predicted_quality=…; considered=a:0.91,b:0.80`` for a response header."""
        n = names or {}
        c = self.chosen
        alts = ",".join(f"{n.get(s.model, s.model)}:{s.quality:.2f}" for s in self.ranked[:limit])
        return (
            f"model={n.get(c.model, c.model)}; predicted_quality={c.quality:.2f}; "
            f"bar={self.bar:.3f}; considered={alts}"
        )


class LearnedRouter:
    """A trained router, loaded from its artifact (a gzipped JSON document)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        if doc.get("features_version") != FEATURES_VERSION:
            raise ValueError(
                f"router artifact has features version {doc.get('features_version')}, "
                f"this build reads {FEATURES_VERSION}; retrain it"
            )
        #: The artifact's settings and validation figures (its weights live below only).
        self.doc = {k: v for k, v in doc.items() if k != "weights"}
        self.models: tuple[str, ...] = tuple(doc["models"])
        k = len(self.models)
        self._bias: list[float] = [float(x) for x in doc["quality_bias"]] + [
            float(x) for x in doc["cost_bias"]
        ]
        # Compact rows (array of doubles): a list of floats would take three times the memory.
        self._weights: dict[int, array[float]] = {
            int(b): array("d", w) for b, w in doc["weights"].items()
        }
        if any(len(w) != 2 * k for w in self._weights.values()) or len(self._bias) != 2 * k:
            raise ValueError("router artifact: weight rows do not match the models")
        self._cost_scale = float(doc["cost_scale"])
        self.word_weight = float(doc["word_weight"])
        #: (quality, λ) pairs, quality ascending and λ descending: on validation data,
        #: the largest (cheapest) λ that reached that mean quality.
        self.table: list[tuple[float, float]] = [(float(b), float(lm)) for b, lm in doc["table"]]
        self.default_bar = float(doc["default_bar"])

    @classmethod
    def load(cls, path: str | Path | None = None) -> LearnedRouter:
        """From a file, or the artifact shipped in the package for the default pool."""
        if path is None:
            raw = resources.files("tokenomy.catalog").joinpath(DEFAULT_ARTIFACT).read_bytes()
        else:
            raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return cls(orjson.loads(raw))

    def predict(self, text: str) -> tuple[list[float], list[float]]:
        """Predicted quality (0–1) and cost (USD) of each model, in ``models`` order."""
        shape, words = _grams(text)
        weights = self._weights
        # Column sums of the matched weight rows run in C (zip/sum), not per element here.
        rows = [w for b in shape if (w := weights.get(b)) is not None]
        acc = (
            [a + sum(col) for a, col in zip(self._bias, zip(*rows, strict=True), strict=True)]
            if rows
            else list(self._bias)
        )
        if self.word_weight > 0 and words:
            scale = _word_scale(words, self.word_weight)
            rows = [w for b in words if (w := weights.get(b)) is not None]
            if rows:
                acc = [
                    a + scale * sum(col)
                    for a, col in zip(acc, zip(*rows, strict=True), strict=True)
                ]
        k = len(self.models)
        q = [min(max(a, 0.01), 0.99) for a in acc[:k]]
        c = [max(a, 0.0) * self._cost_scale for a in acc[k:]]
        return q, c

    def lam(self, bar: float) -> float:
        """λ for a quality bar: the cheapest setting whose validation quality reached it
        (above anything validation reached: 0, the best predicted model whatever it costs)."""
        for b, lam in self.table:
            if b >= bar - 1e-9:
                return lam
        return 0.0

    def lam_for(self, bar: float, text: str) -> float:
        """λ for a bar and a prompt. A bar between two settings of the table is met by a mix
        of them (the curve between them is a line, not a step up to the dearer one): a
        share of prompts, chosen by a hash of the text (the same prompt always gets the
        same λ), takes the dearer setting."""
        lo: tuple[float, float] | None = None
        for b, lam in self.table:
            if b >= bar - 1e-9:
                if lo is None or b - lo[0] <= 1e-12:
                    return lam
                share = (bar - lo[0]) / (b - lo[0])
                u = zlib.crc32(text[-TAIL_CHARS:].encode()) / 2**32
                return lam if u < share else lo[1]
            lo = (b, lam)
        return 0.0

    def decide(self, text: str, bar: float, allowed: Sequence[str] | None = None) -> Decision:
        """Rank the allowed models for a prompt (all of them when ``allowed`` is None)."""
        q, c = self.predict(text)
        lam = self.lam_for(bar, text)
        keep = None if allowed is None else set(allowed)
        ranked = [
            Scored(m, q[i], c[i], q[i] - lam * c[i] / self._cost_scale)
            for i, m in enumerate(self.models)
            if keep is None or m in keep
        ]
        if not ranked:
            raise ValueError("no model of the router's pool is allowed")
        # Ties (equal scores) go to the cheaper model.
        ranked.sort(key=lambda s: (-s.score, s.cost_usd))
        return Decision(bar, lam, tuple(ranked))


def dumps_artifact(doc: dict[str, Any]) -> bytes:
    """The artifact's bytes (gzip, fixed mtime: the same model gives the same file)."""
    return gzip.compress(orjson.dumps(doc), compresslevel=9, mtime=0)
