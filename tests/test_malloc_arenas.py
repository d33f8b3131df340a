"""The arena cap: threads started after it share the C allocator's arenas."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = r"""
import ctypes, ctypes.util, os, sys, tempfile, threading
if sys.argv[1] == "capped":
    from tokenomy.malloc_arenas import limit_arenas
    assert limit_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
barrier = threading.Barrier(6)
def work():
    barrier.wait()  # all at once, so each finds the others' arenas taken
    for _ in range(2000):
        blocks = [bytearray(4096) for _ in range(20)]  # malloc, not Python's small pools
        del blocks
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _arenas(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_threads_started_after_the_cap_share_two_arenas() -> None:
    assert _arenas("free") > 2  # the control: six busy threads take arenas of their own
    assert _arenas("capped") <= 2


_TRIM_PROBE = r"""
import sys
from tokenomy.malloc_arenas import release_free_memory
def rss_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
# A start-up's load: many blocks, freed but for a few survivors spread among them, so
# the allocator cannot give the space back by shrinking its heap from the top.
blocks = [bytearray(2000) for _ in range(40_000)]
keep = blocks[::400]
del blocks
before = rss_kb()
trimmed = release_free_memory() if sys.argv[1] == "trim" else False
print(before - rss_kb(), int(trimmed))
"""


def _freed_kb(mode: str) -> tuple[int, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_PROBE, mode], capture_output=True, text=True, check=True
    )
    kb, ok = out.stdout.split()
    return int(kb), ok == "1"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_release_free_memory_gives_freed_pages_back() -> None:
    kept, _ = _freed_kb("keep")
    freed, ok = _freed_kb("trim")
    assert ok
    assert kept < 2_000  # the control: freed, the pages stay with the process
    assert freed > 40_000  # of the ~80 MB freed, most goes back to the system
