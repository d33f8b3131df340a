"""Run a ``tokenomy`` command under cProfile and dump the stats when it exits.

    python bench/profile_serve.py OUT.prof path/to/tokenomy serve --config ...

The second argument (the tokenomy executable) is skipped: the command runs in this
process so cProfile sees it. ``tokenomy serve`` returns normally on SIGTERM.
"""

from __future__ import annotations

import cProfile
import sys

from tokenomy.cli.main import main


def run() -> int:
    out, argv = sys.argv[1], sys.argv[3:]
    prof = cProfile.Profile()
    prof.enable()
    try:
        return main(argv)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    sys.exit(run())
