"""The server keeps the garbage collector away from what start-up built, and background
threads from holding the GIL for long."""

from __future__ import annotations

import gc
import sys

from tokenomy.cli.serve_cmd import GC_YOUNG_THRESHOLD, GIL_SWITCH_INTERVAL_S, _settle_gc


async def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before, switch = gc.get_threshold(), sys.getswitchinterval()
    survivor = {"built": ["at start-up"]}
    try:
        await _settle_gc(None)  # type: ignore[arg-type]
        # Frozen objects are skipped by every collection, full ones included.
        assert gc.get_freeze_count() > 0
        assert not any(o is survivor for o in gc.get_objects())
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S < switch
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch)
    assert any(o is survivor for o in gc.get_objects())
