"""The import contracts: lower layers never import upper ones, and no package cycles.

Every module of the package is parsed (nothing is imported or run) and each import of
another tokenomy package is checked against ``LAYERS``: a package may import its own
layer's packages only if it is that package, and any package of a lower layer. Imports
inside functions and under ``TYPE_CHECKING`` count as well: a type is a dependency too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

import tokenomy

#: Lowest first. A unit is a subpackage of tokenomy or one of its top-level modules;
#: packages within one layer are independent of each other.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer)
    for layer in (
        {"catalog"},  # vendors, models, prices as data
        # the call, usage, deployments, errors, ids; an asyncio seam; the C allocator's cap
        {"core", "aio", "malloc_arenas"},
        {"billing"},  # money, prices, FX, a call's price: pure
        {"config", "store"},  # the configuration; database, Redis, the batched writer
        {"providers", "tracing"},  # vendor protocols; OpenTelemetry spans
        {"ledger", "admission", "routing", "analytics"},  # decisions and their data
        {"gateway"},  # the pipeline, relay, validation
        {"services"},  # everything wired from the config
        {"batches"},  # batch jobs over the pipeline
        {"videos"},  # video jobs (their holds are made as batch lines' are)
        {"api"},  # the HTTP edge
        {"app"},  # the server process
        {"cli"},  # commands
        {"__main__"},  # python -m tokenomy
    )
)
#: Units that stand alone: they import no other unit (the vendor simulator).
STANDALONE = frozenset({"sim"})

Graph = Mapping[str, Mapping[str, Sequence[str]]]


def unit_of(module: str, root: str) -> str | None:
    """The unit a dotted module name belongs to (None: outside ``root``, or ``root``
    itself, which holds only the version)."""
    parts = module.split(".")
    if parts[0] != root or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every module name an import statement anywhere in ``tree`` names, with its line."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base, node.lineno
            for alias in node.names:  # "from tokenomy import config" names a unit
                yield f"{base}.{alias.name}", node.lineno


def _is_unit(top: Path, name: str) -> bool:
    """A subpackage or module (not a name such as ``__version__`` imported from the root)."""
    return (top / name / "__init__.py").exists() or (top / f"{name}.py").exists()


def import_graph(src: Path, root: str) -> dict[str, dict[str, list[str]]]:
    """Unit -> imported unit -> where (``module:line``), over every module under
    ``src/root``."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted((src / root).rglob("*.py")):
        module = _module_name(path, src)
        unit = unit_of(module, root)
        if unit is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = graph.setdefault(unit, {})
        for name, line in _imported(tree, module, path.name == "__init__.py"):
            other = unit_of(name, root)
            if other is not None and other != unit and _is_unit(src / root, other):
                where = edges.setdefault(other, [])
                if f"{module}:{line}" not in where:
                    where.append(f"{module}:{line}")
    return graph


def layer_violations(
    graph: Graph, layers: Sequence[frozenset[str]], standalone: frozenset[str] = frozenset()
) -> list[str]:
    """Each import that goes up a layer, across a layer, out of a standalone unit, or
    from or to a unit no layer names."""
    level = {u: i for i, layer in enumerate(layers) for u in layer}
    out = []
    for unit, edges in sorted(graph.items()):
        for other, where in sorted(edges.items()):
            if unit in standalone:
                why = f"{unit} stands alone"
            elif other in standalone:
                continue
            elif unit not in level or other not in level:
                missing = unit if unit not in level else other
                why = f"{missing} is in no layer"
            elif level[other] > level[unit]:
                why = f"{other} is above {unit}"
            elif level[other] == level[unit]:
                why = f"{unit} and {other} are independent (one layer)"
            else:
                continue
            out.append(f"{unit} -> {other} ({why}): {', '.join(where)}")
    return out


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


SRC = Path(tokenomy.__file__).resolve().parent.parent


def test_no_layer_imports_upward_and_every_unit_has_a_layer() -> None:
    graph = import_graph(SRC, "tokenomy")
    assert layer_violations(graph, LAYERS, STANDALONE) == []
    # Every unit with a module is a key of the graph: each has its place.
    assert set(graph) <= set().union(*LAYERS) | STANDALONE
    assert {"core", "gateway", "api", "sim"} <= set(graph)


def test_no_package_cycles() -> None:
    assert cycles(import_graph(SRC, "tokenomy")) == []


# ---- the checker itself, on a synthetic package ------------------------------------------


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    """A package ``pkg`` with a lower unit ``low`` and an upper ``up`` importing it."""
    root = tmp_path / "pkg"
    for unit in ("low", "up", "side"):
        (root / unit).mkdir(parents=True)
        (root / unit / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "up" / "a.py").write_text("from pkg.low import b\n")
    (root / "low" / "b.py").write_text("import os\n")
    (root / "top.py").write_text("from pkg.up.a import b\n")
    return tmp_path


LAYERS_OF_PKG = (frozenset({"low"}), frozenset({"up", "side"}), frozenset({"top"}))


def test_checker_passes_a_package_that_keeps_its_layers(pkg: Path) -> None:
    graph = import_graph(pkg, "pkg")
    assert graph["up"] == {"low": ["pkg.up.a:1"]}
    assert layer_violations(graph, LAYERS_OF_PKG) == []
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "source",
    [
        "from pkg.up import a\n",
        "from pkg import up\n",
        "import pkg.up.a\n",
        "from ..up.a import b\n",
        "def f():\n    from pkg.top import x\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.up.a import b\n",
    ],
)
def test_checker_fails_an_upward_import(pkg: Path, source: str) -> None:
    (pkg / "pkg" / "low" / "bad.py").write_text(source)
    graph = import_graph(pkg, "pkg")
    found = layer_violations(graph, LAYERS_OF_PKG)
    assert len(found) == 1 and found[0].startswith("low -> ")
    assert "pkg.low.bad:" in found[0] and "is above low" in found[0]
    assert cycles(graph) in ([["low", "up"]], [["low", "top", "up"]])


def test_checker_fails_an_import_across_one_layer_and_a_unit_in_no_layer(pkg: Path) -> None:
    (pkg / "pkg" / "side" / "c.py").write_text("from pkg.up.a import b\n")
    (pkg / "pkg" / "stray.py").write_text("from pkg.low import b\n")
    found = layer_violations(import_graph(pkg, "pkg"), LAYERS_OF_PKG)
    assert found == [
        "side -> up (side and up are independent (one layer)): pkg.side.c:1",
        "stray -> low (stray is in no layer): pkg.stray:1",
    ]


def test_checker_fails_a_standalone_unit_importing_another(pkg: Path) -> None:
    (pkg / "pkg" / "side" / "c.py").write_text("from pkg.low import b\n")
    found = layer_violations(import_graph(pkg, "pkg"), LAYERS_OF_PKG, frozenset({"side"}))
    assert found == ["side -> low (side stands alone): pkg.side.c:1"]
