"""The bench's own servers and scripts load against the tree as it is: a module renamed
or a class moved in the gateway breaks them at import, which `make bench` would only find
at the end of a long run (the lean relay did, after the core package moved things)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

#: Scripts that import tokenomy at module level (the rest only start it as a process).
SCRIPTS = sorted(
    p.name
    for p in BENCH.glob("*.py")
    if "from tokenomy" in p.read_text() or "import tokenomy" in p.read_text()
)


def test_there_are_bench_scripts_that_use_the_tree() -> None:
    assert "lean_relay.py" in SCRIPTS and "pipeline_bench.py" in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bench_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # scripts import their neighbours by name
    spec = importlib.util.spec_from_file_location(f"bench_{name[:-3]}", BENCH / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # runs its top level; main() stays behind __main__
    assert module.__doc__
