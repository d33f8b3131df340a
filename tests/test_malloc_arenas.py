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
