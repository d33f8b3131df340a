"""Does a prompt's text tell, within its task, which model will answer it well?

    PYTHONPATH=src python bench/router_signal.py --data DIR [--folds 5] [--budget 0.1]

K-fold cross-validation by ``sample_id`` (the folds ``tokenomy router train`` uses) of
the learned router's features and ridge fit, with the packaged artifact's settings.
Every complete row is predicted once by a fit that did not see it. Prints:

- per task and model, the AUC of the out-of-fold predicted quality against the measured
  one (0.5: the text says nothing about that model on that task beyond its average), and
  of the predicted gain of the reference model over the task's best cheap model;
- the best mean quality reached within ``budget`` of always-the-reference's cost (a mix
  of two neighbouring λ settings may spend exactly the budget) by: the learned router;
  a router that knows each prompt's task (``eval_name``) and predicts each model's
  quality as its mean on that task in the training folds (costs as the learned router
  predicts them); and the best single model.

If the learned router does no better than the per-task one, its features carry no
per-prompt signal and a higher quality at that cost needs other inputs, not tuning.
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from tokenomy.routing import routerbench
from tokenomy.routing.learned import LearnedRouter, features
from tokenomy.routing.learned_train import COST_SCALE, LAMBDAS, fit

Array = npt.NDArray[np.float64]


def auc(y: Array, score: Array) -> float:
    """P(a positive row scores above a negative one); NaN if either class is empty."""
    pos = y > 0.5
    n, m = int(pos.sum()), int((~pos).sum())
    if not n or not m:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(len(score))
    return float((ranks[pos].sum() - n * (n - 1) / 2) / (n * m))


def within(q: Array, c: Array, pq: Array, pc: Array, cap: float) -> float:
    """Best mean quality of the λ sweep spending at most ``cap`` (neighbouring settings
    mixed to spend exactly ``cap``, as the default bar does)."""
    rows = np.arange(len(q))
    pts: list[tuple[float, float]] = []
    for lam in sorted(LAMBDAS, reverse=True):  # cheapest first
        pick = np.argmax(pq - lam * pc - 1e-12 * pc, axis=1)
        pts.append((float(c[rows, pick].sum()), float(q[rows, pick].mean())))
    best = max((qq for cc, qq in pts if cc <= cap), default=0.0)
    for (c0, q0), (c1, q1) in pairwise(pts):
        if c0 <= cap < c1:
            best = max(best, q0 + (cap - c0) / (c1 - c0) * (q1 - q0))
    return best


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, metavar="DIR")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--budget", type=float, default=0.1)
    args = ap.parse_args(argv)
    doc = LearnedRouter.load().doc
    alpha, ww = float(doc["alpha"]), float(doc["word_weight"])
    data = routerbench.load(args.data)
    rows = data.rows
    k = len(data.models)
    q = np.array([r.quality for r in rows])
    c = np.array([r.cost for r in rows])
    tasks = np.array([r.task for r in rows])
    fold = np.array(
        [zlib.crc32(f"{args.seed}:fold:{r.sample_id}".encode()) % args.folds for r in rows]
    )
    feats = [features(r.prompt, ww) for r in rows]
    targets = np.hstack([q, c / COST_SCALE])
    pq, pc, prior = np.zeros((len(rows), k)), np.zeros((len(rows), k)), np.zeros((len(rows), k))
    for f in range(args.folds):
        te, tr = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        p = fit([feats[i] for i in tr], targets[tr], alpha).predict([feats[i] for i in te])
        pq[te], pc[te] = np.clip(p[:, :k], 0.01, 0.99), np.maximum(p[:, k:], 0.0)
        for t in set(tasks[te]):
            seen = tr[tasks[tr] == t]
            prior[te[tasks[te] == t]] = q[seen].mean(axis=0) if len(seen) else q[tr].mean(axis=0)
    ref = max(range(k), key=lambda i: (q[:, i].mean(), -c[:, i].sum()))
    cap = args.budget * c[:, ref].sum()
    short = [m.split("/")[-1][:12] for m in data.models]
    print(
        f"{len(rows)} complete rows, {args.folds} folds by sample_id; ridge alpha={alpha:g}, "
        f"word_weight={ww:g}; reference {data.models[ref]}"
    )
    print("\nAUC of the out-of-fold predicted quality, per task (0.5 = no signal):\n")
    print("| task | rows | " + " | ".join(short) + " | reference over best cheap |")
    print("|---|---:|" + "---:|" * (k + 1))
    for t in sorted(set(tasks)):
        i = tasks == t
        aucs = [auc(q[i, j], pq[i, j]) for j in range(k)]
        # The best cheap model: the best mean quality among those under a tenth of the
        # reference's cost on this task.
        cheap = [j for j in range(k) if c[i, j].sum() < 0.1 * c[i, ref].sum()]
        b = max(cheap, key=lambda j: q[i, j].mean()) if cheap else ref
        gain = auc((q[i, ref] > q[i, b]).astype(float), pq[i, ref] - pq[i, b])
        cells = " | ".join(f"{a:.2f}" for a in aucs)
        print(f"| {t} | {int(i.sum())} | {cells} | {gain:.2f} ({short[b]}) |")
    singles = [(float(q[:, j].mean()), data.models[j]) for j in range(k) if c[:, j].sum() <= cap]
    print(f"\nBest mean quality within {args.budget:.0%} of always {data.models[ref]}'s cost")
    print(f"(always {data.models[ref]}: {q[:, ref].mean():.4f}, ${c[:, ref].sum():.4f}):\n")
    print("| router | quality |")
    print("|---|---:|")
    print(f"| learned (text features) | {within(q, c, pq, pc, cap):.4f} |")
    print(f"| per-task mean quality | {within(q, c, prior, pc, cap):.4f} |")
    if singles:
        sq, sm = max(singles)
        print(f"| best single model ({sm}) | {sq:.4f} |")


if __name__ == "__main__":
    main()
