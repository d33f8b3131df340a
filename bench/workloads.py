"""The bench's workloads: what users run, beside the small one-tenant request.

Each workload names the request modes it loads (``json``, ``sse``, ``long``: a stream of
:data:`upstream.LONG_EVENTS` events), how many tenants (an org with a key each) are in
the database and how many of their keys the load rotates through, and the prompt's size.
``base`` is the run every system gets (and the peers' only one); the others run on the
bare relays and tokenomy, selected with ``--workloads``.
"""

from __future__ import annotations

from dataclasses import dataclass

from systems import MODES


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    modes: tuple[str, ...] = MODES
    #: Tenants in the database (each an org, topped up, with one key).
    orgs: int = 1
    #: Keys the load rotates through, one per request in turn (1: one key throughout).
    rotate: int = 1
    #: The user message's size in bytes (0: the small prompt).
    prompt_bytes: int = 0


BASE = Workload("base", "one org and key, a small prompt")
WORKLOADS = {
    w.name: w
    for w in (
        BASE,
        Workload("orgs1k", "1,000 orgs and keys in rotation", orgs=1000, rotate=1000),
        Workload("prompt400k", "a 400 KB (~100K-token) prompt", ("json",), prompt_bytes=400_000),
        Workload("stream2k", "a 2,000-event stream", ("long",)),
        Workload(
            "orgs10k",
            "10,000 orgs in the database, 1,000 of their keys in rotation",
            ("json",),
            orgs=10_000,
            rotate=1000,
        ),
    )
}
#: The systems an extra workload runs on (the peers run the base workload only).
SYSTEMS = ("direct", "bare", "bare-lean", "tokenomy-sqlite", "tokenomy-pg")


def prompt(n: int) -> str:
    """``n`` bytes of English-like text: words of a fixed vocabulary in a varying order,
    so a tokenizer (when anything counts) sees ordinary words, not one repeated one."""
    text = (
        "the gateway meters every token a tenant sends and bills it against a prepaid "
        "balance while the vendor answers with a stream of chunks that are relayed as "
        "they come and counted once at the end"
    )
    words = text.split(" ")
    out: list[str] = []
    size = i = 0
    while size < n:
        w = words[(i * 7 + i // len(words)) % len(words)]
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)[:n]
