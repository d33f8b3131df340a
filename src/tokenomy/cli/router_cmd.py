"""``tokenomy router``: train the learned router, evaluate it, export scored traffic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from tokenomy.cli import router_export
from tokenomy.cli.common import fail
from tokenomy.routing import routerbench
from tokenomy.routing.learned import LearnedRouter, dumps_artifact
from tokenomy.routing.learned_eval import Point, baselines, cost_quality_svg, routed, routed_each


def register(sub: Any) -> None:
    p = sub.add_parser("router", help="train, evaluate and feed the learned router (model auto)")
    rsub = p.add_subparsers(dest="router_command", required=True, metavar="ACTION")

    t = rsub.add_parser("train", help="learn from CSVs of prompts with each model's quality/cost")
    t.add_argument("--data", required=True, metavar="DIR", help="a CSV file or a folder of them")
    t.add_argument("--out", default="router.json.gz", help="artifact to write")
    t.add_argument("--seed", type=int, default=20, help="validation split seed")
    t.add_argument("--val-percent", type=int, default=20, help="share held out to tune on")
    t.add_argument(
        "--budget",
        type=float,
        default=0.09,
        help="share of the best model's cost the default bar may spend (default 0.09: "
        "a margin under a tenth)",
    )
    t.add_argument("--default-bar", type=float, help="fix the default bar instead")
    t.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the model fitted on the training share only (to evaluate on --split validation)",
    )
    t.add_argument(
        "--folds",
        type=int,
        default=5,
        metavar="K",
        help="K-fold cross-validation by sample_id with the tuned settings: its pooled "
        "cost sets the default bar and its figures are reported (default 5; 0: off)",
    )
    t.set_defaults(func=train_cmd)

    e = rsub.add_parser("eval", help="cost and quality over a sweep of bars, with baselines")
    e.add_argument("--data", required=True, metavar="FILE_OR_DIR")
    e.add_argument("--model", metavar="FILE", help="artifact (default: the packaged one)")
    e.add_argument("--format", choices=("table", "json"), default="table")
    e.add_argument(
        "--split",
        choices=("all", "train", "validation"),
        default="all",
        help="rows to use: the validation share is the one training tuned on (same seed)",
    )
    e.add_argument("--seed", type=int, default=20)
    e.add_argument("--val-percent", type=int, default=20)
    e.add_argument(
        "--svg", default="router-eval.svg", metavar="FILE", help="curve to write ('' for none)"
    )
    e.set_defaults(func=eval_cmd)

    router_export.register(rsub)


def train_cmd(args: argparse.Namespace) -> int:
    try:
        from tokenomy.routing.learned_train import train
    except ImportError:
        fail("training needs numpy: pip install 'tokenomy[train]'")
    try:
        data = routerbench.load(args.data, complete=False)
        doc, rep = train(
            data,
            seed=args.seed,
            val_percent=args.val_percent,
            budget=args.budget,
            default_bar=args.default_bar,
            refit=not args.no_refit,
            folds=args.folds,
        )
    except ValueError as e:
        fail(str(e))
    raw = dumps_artifact(doc)
    Path(args.out).write_bytes(raw)
    for line in rep.lines():
        print(line)
    print(f"wrote {args.out} ({len(raw) / 1e6:.1f} MB)")
    return 0


def evaluate(router: LearnedRouter, data: routerbench.Dataset) -> dict[str, Any]:
    """The router's sweep, its default point and the baselines on complete rows."""
    idx = [data.models.index(m) for m in router.models if m in data.models]
    if len(idx) != len(router.models):
        missing = sorted(set(router.models) - set(data.models))
        raise ValueError(f"the data has no columns for {', '.join(missing)}")
    quality = [[r.quality[i] for i in idx] for r in data.rows]
    cost = [[r.cost[i] for i in idx] for r in data.rows]
    pq: list[list[float]] = []
    pc: list[list[float]] = []
    for r in data.rows:
        q, c = router.predict(r.prompt)
        pq.append(q)
        pc.append(c)
    scale = router.doc["cost_scale"]
    pc_units = [[x / scale for x in row] for row in pc]
    curve = []
    for bar, lam in router.table:
        p = routed(quality, cost, pq, pc_units, lam)
        curve.append({"bar": bar, "lambda": lam, **p.as_dict()})
    # The default bar may lie between two settings: each prompt's own λ (see lam_for).
    lams = [router.lam_for(router.default_bar, r.prompt) for r in data.rows]
    d = routed_each(quality, cost, pq, pc_units, lams)
    refs = baselines(router.models, quality, cost, at_cost=d.cost)
    return {
        "rows": len(data.rows),
        "models": list(router.models),
        "default": {"bar": router.default_bar, **d.as_dict()},
        "baselines": refs,
        "curve": curve,
    }


def eval_cmd(args: argparse.Namespace) -> int:
    try:
        router = LearnedRouter.load(args.model)
        data = routerbench.load(args.data)
        if args.split != "all":
            tr, val = routerbench.split(data.rows, args.seed, args.val_percent)
            rows = val if args.split == "validation" else tr
            data = routerbench.Dataset(data.models, tuple(rows))
        out = evaluate(router, data)
    except (ValueError, OSError) as e:
        fail(str(e))
    if args.svg:
        pts = [(c["lambda"], Point(c["quality"], c["cost"])) for c in out["curve"]]
        d = out["default"]
        svg = cost_quality_svg(
            pts, out["baselines"], Point(d["quality"], d["cost"]), title=f"router on {args.data}"
        )
        Path(args.svg).write_text(svg, encoding="utf-8")
    if args.format == "json":
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    best = out["baselines"]["always-best"]
    print(f"{out['rows']} rows; cost share is of always {best['model']} (${best['cost']:.4f})")
    print(f"{'bar':>7} {'quality':>8} {'cost $':>10} {'share':>7}")
    for c in out["curve"]:
        share = c["cost"] / best["cost"] if best["cost"] else 0.0
        print(f"{c['bar']:7.3f} {c['quality']:8.3f} {c['cost']:10.4f} {share:7.1%}")
    d = out["default"]
    share = d["cost"] / best["cost"] if best["cost"] else 0.0
    print(
        f"default bar {d['bar']:.3f}: quality {d['quality']:.3f}, cost ${d['cost']:.4f} "
        f"({share:.1%})"
    )
    for name, b in out["baselines"].items():
        what = f" ({b['model']})" if "model" in b else ""
        print(f"  {name}{what}: quality {b['quality']:.3f}, cost ${b['cost']:.4f}")
    if args.svg:
        print(f"curve: {args.svg}")
    return 0
