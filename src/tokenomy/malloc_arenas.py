"""The C allocator's memory: a cap on its arenas, so the gateway's threads share their
memory, and freed pages handed back after a bulk load.

glibc gives each thread that allocates while another holds an arena an arena of its own,
up to eight per core, and memory freed in one is kept for that one. The gateway's
background threads (the durable writer, the roll-ups, ``asyncio.to_thread``) each grew
one under load: with 1,000 tenants in rotation the process held 130 MB, 117 MB with two
arenas, at the same CPU.

A bulk load (every key and org at start-up, a rebuild of the live ledger) frees most of
what it allocated, but glibc returns a heap's memory only from its top: a few survivors
above the freed space keep it all. With 10,000 tenants that was about 5 MB of the
process's resident memory; ``malloc_trim`` gives back the free pages wherever they are.
Both are no-ops off glibc.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["ARENAS", "limit_arenas", "release_free_memory"]

log = logging.getLogger(__name__)

#: Arenas the process may use: the event loop's thread and one shared by the others.
ARENAS = 2
#: ``mallopt``'s parameter number for the arena cap (malloc.h).
_M_ARENA_MAX = -8


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap the arenas at ``n`` for every thread started from now on; True when the C
    library took it. Call before the first background thread starts."""
    try:
        # The process's own symbols, the C library's among them: no search for its file
        # (find_library runs ldconfig, absent from minimal images).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # no mallopt (macOS): nothing to cap
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_ARENA_MAX, n))
    if not ok:
        log.debug("the C library refused an arena cap of %d", n)
    return ok


def release_free_memory() -> bool:
    """Give the free pages of the C allocator's heaps back to the system (after a bulk
    load); False off glibc. About half a millisecond at the gateway's size."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False  # not glibc
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
