"""Training rows in the RouterBench layout: a CSV per task, one row per prompt.

Columns: ``sample_id``, ``prompt`` (a Python list literal of strings, or plain text),
``eval_name``, then per model one quality column named after it (0–1; empty = not
measured) and one ``<model>|total_cost`` column (USD). ``tokenomy router export`` writes
the same layout from a gateway's scored requests.
"""

from __future__ import annotations

import ast
import csv
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

COST_SUFFIX = "|total_cost"
NAN = float("nan")
#: Columns that are neither a model's quality nor its cost.
META = frozenset(
    {"routerbench_index", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}
)


@dataclass(frozen=True, slots=True)
class Row:
    sample_id: str
    task: str
    prompt: str
    quality: tuple[float, ...]
    cost: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Dataset:
    models: tuple[str, ...]
    rows: tuple[Row, ...]


def csv_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.csv"))
        if not files:
            raise ValueError(f"no .csv files in {p}")
        return files
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    return [p]


def _prompt(cell: str) -> str:
    if cell.startswith("["):
        try:
            v = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            return cell
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            # A repeated prompt in the list is an upstream merge error: keep it once.
            return "\n".join(dict.fromkeys(v))
    return cell


def _num(cell: str | None) -> float:
    return float(cell) if cell not in (None, "") else NAN


def load(
    path: str | Path, models: Sequence[str] | None = None, *, complete: bool = True
) -> Dataset:
    """The rows of the CSV file(s) at ``path``; a ``sample_id`` seen twice keeps its first
    row with the most scores. ``complete``: only rows where every model is scored
    (evaluation needs them); otherwise rows with at least one score, NaN for the others
    (a gateway's own traffic)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    names: tuple[str, ...] | None = tuple(models) if models is not None else None
    kept: dict[str, Row] = {}
    for f in csv_files(path):
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            found = tuple(h for h in header if h not in META and COST_SUFFIX not in h)
            if names is None:
                names = found
            missing = [m for m in names if m not in header or m + COST_SUFFIX not in header]
            if missing:
                raise ValueError(f"{f.name}: no columns for {', '.join(missing)}")
            for r in reader:
                sid = r.get("sample_id") or ""
                try:
                    q = tuple(_num(r[m]) for m in names)
                    c = tuple(_num(r[m + COST_SUFFIX]) for m in names)
                except ValueError as e:
                    raise ValueError(f"{f.name}, {sid}: {e}") from None
                scored = [x == x and y == y for x, y in zip(q, c, strict=True)]
                if not (all(scored) if complete else any(scored)):
                    continue
                old = kept.get(sid)
                if old is None or _scored(old) < sum(scored):
                    kept[sid] = Row(
                        sid, r.get("eval_name") or "", _prompt(r.get("prompt") or ""), q, c
                    )
    rows = list(kept.values())
    if names is None or not rows:
        raise ValueError(f"no complete rows in {path}")
    return Dataset(names, tuple(rows))


def _scored(r: Row) -> int:
    return sum(1 for x in r.quality if x == x)


def is_validation(sample_id: str, seed: int = 20, percent: int = 20) -> bool:
    """The deterministic validation share of the rows, decided by ``sample_id`` alone."""
    return zlib.crc32(f"{seed}:{sample_id}".encode()) % 100 < percent


def split(rows: Iterable[Row], seed: int = 20, percent: int = 20) -> tuple[list[Row], list[Row]]:
    train: list[Row] = []
    val: list[Row] = []
    for r in rows:
        (val if is_validation(r.sample_id, seed, percent) else train).append(r)
    return train, val


def write(path: str | Path, models: Sequence[str], rows: Iterable[Row]) -> int:
    """Rows in the same layout (prompt as a one-element list literal); returns the count."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["sample_id", "prompt", "eval_name", *models, *(m + COST_SUFFIX for m in models)]
        )
        for r in rows:
            w.writerow(
                [
                    r.sample_id,
                    repr([r.prompt]),
                    r.task,
                    *("" if x != x else repr(x) for x in r.quality),
                    *("" if x != x else repr(x) for x in r.cost),
                ]
            )
            n += 1
    return n
