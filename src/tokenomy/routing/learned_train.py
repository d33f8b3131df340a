"""Training the learned router (needs numpy: ``pip install tokenomy[train]``).

Per pool model, ridge regression on the hashed prompt features predicts the quality
(0–1) and the cost of its answer. It is solved in its dual form (one linear system the
size of the training rows, for every model at once), so no feature matrix is ever held
whole. The word features' weight and the ridge penalty are tuned on a validation split
carved out of the rows by ``sample_id``; the split's routed curve becomes the table that
turns a quality bar into λ; the final model is refitted on every row (unless ``refit`` is
off, to evaluate it on the validation split afterwards).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenomy.routing.learned import FEATURES_VERSION, HASH_BITS, TAIL_CHARS, features
from tokenomy.routing.learned_eval import Point, single
from tokenomy.routing.routerbench import Dataset, Row, split

Array = npt.NDArray[np.float64]

#: Costs are learned in thousandths of a USD (per-prompt costs are ~1e-5..1e-2 USD).
COST_SCALE = 1e-3
#: λ settings swept, in quality per COST_SCALE USD: 0 buys the best predicted model.
LAMBDAS: tuple[float, ...] = (0.0, *(float(x) for x in np.geomspace(1e-3, 1e3, 73)))
ALPHAS = (1.0, 3.0, 10.0, 30.0)
WORD_WEIGHTS = (0.0, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Fit:
    """Dual ridge solution: bias per target and the weights of every bucket seen."""

    bias: Array
    weights: dict[int, Array]

    def predict(self, feats: Sequence[dict[int, float]]) -> Array:
        out = np.tile(self.bias, (len(feats), 1))
        for i, f in enumerate(feats):
            for b, v in f.items():
                w = self.weights.get(b)
                if w is not None:
                    out[i] += v * w
        return out


def fit(feats: Sequence[dict[int, float]], targets: Array, alpha: float) -> Fit:
    """Ridge regression, one column of ``targets`` per output (NaN: not labelled there)."""
    cols = np.array(sorted({b for f in feats for b in f}), dtype=np.int64)
    index = {int(b): j for j, b in enumerate(cols)}
    ri = np.array([i for i, f in enumerate(feats) for _ in f], dtype=np.int64)
    ci = np.array([index[b] for f in feats for b in f], dtype=np.int64)
    vals = np.array([v for f in feats for v in f.values()])
    n = len(feats)
    kernel = _kernel(n, ri, ci, vals, len(cols))
    labelled = ~np.isnan(targets)
    bias = np.array(
        [
            targets[labelled[:, j], j].mean() if labelled[:, j].any() else 0.0
            for j in range(targets.shape[1])
        ]
    )
    dual = np.zeros_like(targets)
    # Outputs labelled on the same rows share one solve (RouterBench: all of them).
    patterns: dict[bytes, list[int]] = {}
    for j in range(targets.shape[1]):
        patterns.setdefault(labelled[:, j].tobytes(), []).append(j)
    for cols_ in patterns.values():
        js = np.array(cols_, dtype=np.int64)
        rows = labelled[:, js[0]]
        if not rows.any():
            continue
        k = kernel[np.ix_(rows, rows)]
        y = targets[np.ix_(rows, js)] - bias[js]
        dual[np.ix_(rows, js)] = np.linalg.solve(k + alpha * np.eye(len(k)), y)
    w = np.zeros((len(cols), targets.shape[1]))
    np.add.at(w, ci, vals[:, None] * dual[ri])
    keep = np.nonzero(np.any(np.abs(w) > 1e-7, axis=1))[0]
    return Fit(bias, {int(cols[j]): w[j] for j in keep})


def _kernel(
    n: int, ri: npt.NDArray[np.int64], ci: npt.NDArray[np.int64], vals: Array, ncols: int
) -> Array:
    """X·Xᵀ of the sparse feature matrix: a dense product over the columns most rows
    share, pair by pair over the rare ones (most of the columns)."""
    df = np.bincount(ci, minlength=ncols)
    common = df > 64
    kernel = np.zeros((n, n))
    sel = common[ci]
    if sel.any():
        remap = np.cumsum(common) - 1
        x = np.zeros((n, int(common.sum())))
        np.add.at(x, (ri[sel], remap[ci[sel]]), vals[sel])
        kernel += x @ x.T
    order = np.argsort(ci[~sel], kind="stable")
    r, c, v = ri[~sel][order], ci[~sel][order], vals[~sel][order]
    bounds = np.flatnonzero(np.diff(c)) + 1
    for rr, vv in zip(np.split(r, bounds), np.split(v, bounds), strict=True):
        if len(rr):
            kernel[np.ix_(rr, rr)] += np.outer(vv, vv)
    return kernel


def _targets(rows: Sequence[Row]) -> Array:
    q = np.array([r.quality for r in rows], dtype=float)
    c = np.array([r.cost for r in rows], dtype=float) / COST_SCALE
    return np.hstack([q, c])


def _predictions(f: Fit, feats: Sequence[dict[int, float]], k: int) -> tuple[Array, Array]:
    p = f.predict(feats)
    return np.clip(p[:, :k], 0.01, 0.99), np.maximum(p[:, k:], 0.0)


def _sweep(
    quality: Array, cost: Array, pq: Array, pc: Array, lams: Sequence[float] = LAMBDAS
) -> list[tuple[float, Point]]:
    """``learned_eval.sweep`` in numpy (training sweeps many settings)."""
    rows = np.arange(len(quality))
    out = []
    for lam in lams:
        # The tiny cost term breaks ties towards the cheaper prediction, as serving does.
        pick = np.argmax(pq - lam * pc - 1e-12 * pc, axis=1)
        out.append((lam, Point(float(quality[rows, pick].mean()), float(cost[rows, pick].sum()))))
    return out


def _mixed(
    quality: Array,
    cost: Array,
    pq: Array,
    pc: Array,
    prompts: Sequence[str],
    mix: tuple[float, float, float],
) -> Point:
    """The point reached when each prompt takes the λ ``LearnedRouter.lam_for`` gives it:
    the dearer setting's (``mix[1]``) for a ``mix[2]`` share of prompts by their hash."""
    lo_lam, hi_lam, share = mix
    lams = np.array(
        [
            hi_lam if zlib.crc32(p[-TAIL_CHARS:].encode()) / 2**32 < share else lo_lam
            for p in prompts
        ]
    )
    pick = np.argmax(pq - lams[:, None] * pc - 1e-12 * pc, axis=1)
    rows = np.arange(len(quality))
    return Point(float(quality[rows, pick].mean()), float(cost[rows, pick].sum()))


def _table(curve: list[tuple[float, Point]]) -> list[tuple[float, float, float]]:
    """(quality, λ, cost) from the cheapest setting up, keeping each that raised quality."""
    out: list[tuple[float, float, float]] = []
    for lam, p in sorted(curve, key=lambda t: -t[0]):
        if not out or p.quality > out[-1][0] + 1e-12:
            out.append((p.quality, lam, p.cost))
    return out


@dataclass
class Report:
    models: tuple[str, ...]
    train_rows: int
    val_rows: int
    alpha: float
    word_weight: float
    budget: float
    reference: str
    reference_val: Point
    default_bar: float
    default_val: Point
    tried: list[dict[str, float]]
    #: The validation rows were not scored on every model: figures are predictions.
    estimated: bool = False
    #: k-fold cross-validation by sample_id (``folds`` > 1): one entry per fold.
    cv: list[dict[str, float]] | None = None

    def lines(self) -> list[str]:
        ref = self.reference_val
        d = self.default_val
        out = [
            f"rows: {self.train_rows} train, {self.val_rows} validation (by sample_id)",
            *(
                ["validation figures are the model's own estimates (rows score one model)"]
                if self.estimated
                else []
            ),
            f"tuned: alpha={self.alpha:g}, word_weight={self.word_weight:g}",
            f"validation, always {self.reference}: quality {ref.quality:.3f}, cost ${ref.cost:.4f}",
            f"validation, router at the default bar {self.default_bar:.3f}: quality "
            f"{d.quality:.3f}, cost ${d.cost:.4f} ({d.cost / ref.cost:.1%} of {self.reference})",
            "grid (validation quality at <= budget share of the reference's cost):",
        ]
        out += [
            f"  alpha={t['alpha']:g} word_weight={t['word_weight']:g}: quality {t['quality']:.4f}"
            for t in self.tried
        ]
        if self.cv:
            out.append(
                f"{len(self.cv)}-fold cross-validation by sample_id (router at the default bar; "
                f"best quality within {self.budget:g} of {self.reference}'s cost):"
            )
            out += [
                f"  fold {i}: {int(f['rows'])} rows, quality {f['quality']:.4f}, cost "
                f"${f['cost']:.4f} ({f['share']:.1%}), always {self.reference} "
                f"{f['reference_quality']:.4f}; within budget {f['within']:.4f}"
                for i, f in enumerate(self.cv)
            ]
            mean = {k: sum(f[k] for f in self.cv) / len(self.cv) for k in self.cv[0]}
            out.append(
                f"  mean: quality {mean['quality']:.4f}, cost share {mean['share']:.1%}, "
                f"always {self.reference} {mean['reference_quality']:.4f}; "
                f"within budget {mean['within']:.4f}"
            )
        return out


@dataclass(frozen=True, slots=True)
class FoldCurve:
    """One fold's routed sweep (over ``LAMBDAS``) and the reference model's point."""

    rows: int
    curve: list[tuple[float, Point]]
    reference: Point


def cross_validate(
    data: Dataset, folds: int, *, seed: int, alpha: float, word_weight: float, reference: int
) -> list[FoldCurve]:
    """Per fold of the complete rows (by ``sample_id``): fit on the other folds with the
    tuned settings and sweep λ on the fold."""
    complete = [r for r in data.rows if all(x == x for x in r.quality + r.cost)]
    k = len(data.models)
    feats = [features(r.prompt, word_weight) for r in complete]
    fold_of = [zlib.crc32(f"{seed}:fold:{r.sample_id}".encode()) % folds for r in complete]
    out = []
    for i in range(folds):
        te = [j for j, f in enumerate(fold_of) if f == i]
        tr = [j for j, f in enumerate(fold_of) if f != i]
        if not te or not tr:
            continue
        model = fit([feats[j] for j in tr], _targets([complete[j] for j in tr]), alpha)
        pq, pc = _predictions(model, [feats[j] for j in te], k)
        q = np.array([complete[j].quality for j in te])
        c = np.array([complete[j].cost for j in te])
        ref = Point(float(q[:, reference].mean()), float(c[:, reference].sum()))
        out.append(FoldCurve(len(te), _sweep(q, c, pq, pc), ref))
    return out


def pooled(curves: list[FoldCurve]) -> tuple[list[tuple[float, Point]], Point]:
    """The folds' sweeps as one (mean quality and total cost over every fold's rows) and
    the reference model's point over the same rows."""
    n = sum(f.rows for f in curves)
    out = [
        (
            lam,
            Point(
                sum(f.curve[i][1].quality * f.rows for f in curves) / n,
                sum(f.curve[i][1].cost for f in curves),
            ),
        )
        for i, lam in enumerate(LAMBDAS)
    ]
    ref = Point(
        sum(f.reference.quality * f.rows for f in curves) / n,
        sum(f.reference.cost for f in curves),
    )
    return out, ref


def _fold_figures(
    curves: list[FoldCurve], mix: tuple[float, float, float], budget: float
) -> list[dict[str, float]]:
    """Per fold: the router at the default (``mix``: λ of the cheaper setting, of the
    dearer one and the dearer one's share of prompts; its expected point), and the best
    quality the fold's own sweep reached within ``budget`` (an upper bound: λ chosen on
    the fold itself)."""
    out = []
    lo_lam, hi_lam, share = mix
    for f in curves:
        lo = next(p for lm, p in f.curve if lm == lo_lam)
        hi = next(p for lm, p in f.curve if lm == hi_lam)
        at = Point(
            lo.quality + share * (hi.quality - lo.quality), lo.cost + share * (hi.cost - lo.cost)
        )
        within = [p.quality for _, p in f.curve if p.cost <= budget * f.reference.cost]
        out.append(
            {
                "rows": float(f.rows),
                "quality": at.quality,
                "cost": at.cost,
                "share": at.cost / f.reference.cost,
                "reference_quality": f.reference.quality,
                "within": max(within) if within else 0.0,
            }
        )
    return out


def train(
    data: Dataset,
    *,
    seed: int = 20,
    val_percent: int = 20,
    budget: float = 0.1,
    alphas: Sequence[float] = ALPHAS,
    word_weights: Sequence[float] = WORD_WEIGHTS,
    default_bar: float | None = None,
    refit: bool = True,
    folds: int = 0,
) -> tuple[dict[str, Any], Report]:
    """Tune on a validation split, refit on every row; the artifact and a report.

    ``budget`` is the share of the best single model's validation cost the default bar
    may spend: the default bar is the highest validation quality reached within it.
    ``folds`` > 1 adds k-fold cross-validation figures to the report (a 20 % split of a
    few thousand rows is noisy: about ±2 points of quality).
    """
    models = data.models
    k = len(models)
    tr, val = split(data.rows, seed, val_percent)
    if not tr or not val:
        raise ValueError("too few rows for a validation split")
    complete_val = [r for r in val if all(x == x for x in r.quality + r.cost)]
    estimated = not complete_val
    if estimated:
        # A gateway's own traffic scores one model per request: nothing to measure a
        # routed choice against. The validation rows' labels become a first fit's
        # predictions (a model-based estimate, said so in the report); no tuning.
        alphas, word_weights = alphas[-2:-1] or alphas, word_weights[-1:]
        f0 = [features(r.prompt, word_weights[0]) for r in val]
        pq0, pc0 = _predictions(
            fit([features(r.prompt, word_weights[0]) for r in tr], _targets(tr), alphas[0]), f0, k
        )
        complete_val = [
            Row(r.sample_id, r.task, r.prompt, tuple(q), tuple(x * COST_SCALE for x in c))
            for r, q, c in zip(val, pq0.tolist(), pc0.tolist(), strict=True)
        ]
    vq = [list(r.quality) for r in complete_val]
    vc = [list(r.cost) for r in complete_val]
    vq_a = np.array(vq)
    vc_a = np.array(vc)
    singles = [single(vq, vc, i) for i in range(k)]
    ref = max(range(k), key=lambda i: (singles[i].quality, -singles[i].cost))
    limit = budget * singles[ref].cost
    y_tr = _targets(tr)
    best: tuple[float, float, float, list[tuple[float, Point]], Array, Array] | None = None
    tried: list[dict[str, float]] = []
    for ww in word_weights:
        f_tr = [features(r.prompt, ww) for r in tr]
        f_val = [features(r.prompt, ww) for r in complete_val]
        for alpha in alphas:
            pq, pc = _predictions(fit(f_tr, y_tr, alpha), f_val, k)
            curve = _sweep(vq_a, vc_a, pq, pc)
            within = [p.quality for _, p in curve if p.cost <= limit]
            score = max(within) if within else 0.0
            tried.append({"alpha": alpha, "word_weight": ww, "quality": score})
            if best is None or score > best[0] + 1e-9:
                best = (score, alpha, ww, curve, pq, pc)
    assert best is not None
    _, alpha, ww, curve, best_pq, best_pc = best
    curves: list[FoldCurve] = []
    if folds > 1 and not estimated:
        curves = cross_validate(data, folds, seed=seed, alpha=alpha, word_weight=ww, reference=ref)
    if curves:
        # Every row routed once by a model that did not see it: a smoother curve than the
        # 20 % split's (whose cost share at one λ varies by a few points from split to
        # split), so the bar-to-λ table and the default bar come from it.
        pooled_curve, pooled_ref = pooled(curves)
        table = _table(pooled_curve)
    else:
        table = _table(curve)
    # The default's mix: the dearer setting's λ and its share of prompts (see lam_for).
    hi_lam, share = 0.0, 0.0
    if default_bar is None and curves:
        # Between the last setting within the budget and the next, dearer one, a mix of
        # the two spends exactly the budget (the curve's steps are a few points apart).
        cap = budget * pooled_ref.cost
        i = max((j for j, t in enumerate(table) if t[2] <= cap), default=0)
        default = table[i]
        if i + 1 < len(table) and table[i][2] <= cap < table[i + 1][2]:
            hi_lam = table[i + 1][1]
            share = (cap - table[i][2]) / (table[i + 1][2] - table[i][2])
            q = table[i][0] + share * (table[i + 1][0] - table[i][0])
            default = (q, default[1], cap)
    elif default_bar is None:
        fits = [t for t in table if t[2] <= limit]
        default = fits[-1] if fits else table[0]
    else:
        default = next((t for t in table if t[0] >= default_bar), table[-1])
    # Exactly the table's figure: a bar rounded up would map to the next, dearer setting.
    bar = round(default[0], 6) if default_bar is None else default_bar
    rows = data.rows if refit else tr
    final = fit([features(r.prompt, ww) for r in rows], _targets(rows), alpha)
    doc = {
        "features_version": FEATURES_VERSION,
        "hash_bits": HASH_BITS,
        "tail_chars": TAIL_CHARS,
        "models": list(models),
        "word_weight": ww,
        "alpha": alpha,
        "cost_scale": COST_SCALE,
        "quality_bias": [round(float(x), 6) for x in final.bias[:k]],
        "cost_bias": [round(float(x), 6) for x in final.bias[k:]],
        "weights": {
            str(b): [round(float(x), 6) for x in w] for b, w in sorted(final.weights.items())
        },
        "table": [[round(q, 6), lam] for q, lam, _ in table],
        "default_bar": bar,
        "validation": {
            "seed": seed,
            "percent": val_percent,
            "refit_on_all_rows": refit,
            "model_based_estimate": estimated,
            "rows": len(complete_val),
            "curve": [[lam, round(p.quality, 6), round(p.cost, 8)] for lam, p in curve],
        },
    }
    rep = Report(
        models=models,
        train_rows=len(tr),
        val_rows=len(complete_val),
        alpha=alpha,
        word_weight=ww,
        budget=budget,
        reference=models[ref],
        reference_val=singles[ref],
        default_bar=bar,
        # The validation split's own point at the default (the table may be pooled).
        default_val=_mixed(
            vq_a,
            vc_a,
            best_pq,
            best_pc,
            [r.prompt for r in complete_val],
            (default[1], hi_lam, share),
        ),
        tried=tried,
        estimated=estimated,
    )
    if curves:
        rep.cv = _fold_figures(curves, (default[1], hi_lam, share), budget)
    return doc, rep
