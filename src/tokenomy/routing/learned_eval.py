"""How well a router does on labelled rows: its cost–quality curve and the reference points.

Pure Python: used by ``tokenomy router eval`` and, on the validation split, by training.
A point is a mean quality (0–1) and a total cost (USD) over the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Matrix = Sequence[Sequence[float]]


@dataclass(frozen=True, slots=True)
class Point:
    quality: float
    cost: float

    def as_dict(self) -> dict[str, float]:
        return {"quality": round(self.quality, 4), "cost": round(self.cost, 6)}


def routed(quality: Matrix, cost: Matrix, pred_q: Matrix, pred_c: Matrix, lam: float) -> Point:
    """The point reached by picking, per row, the model maximising ``pred_q - λ·pred_c``
    (costs in the predictions' unit; ties to the cheaper prediction)."""
    return routed_each(quality, cost, pred_q, pred_c, [lam] * len(quality))


def routed_each(
    quality: Matrix, cost: Matrix, pred_q: Matrix, pred_c: Matrix, lams: Sequence[float]
) -> Point:
    """``routed`` with a λ per row."""
    q = c = 0.0
    for qs, cs, pq, pc, lam in zip(quality, cost, pred_q, pred_c, lams, strict=True):
        best = max(range(len(pq)), key=lambda i: (pq[i] - lam * pc[i], -pc[i]))
        q += qs[best]
        c += cs[best]
    n = max(len(quality), 1)
    return Point(q / n, c)


def sweep(
    quality: Matrix, cost: Matrix, pred_q: Matrix, pred_c: Matrix, lams: Sequence[float]
) -> list[tuple[float, Point]]:
    return [(lam, routed(quality, cost, pred_q, pred_c, lam)) for lam in lams]


def single(quality: Matrix, cost: Matrix, i: int) -> Point:
    n = max(len(quality), 1)
    return Point(sum(r[i] for r in quality) / n, sum(r[i] for r in cost))


def baselines(
    models: Sequence[str], quality: Matrix, cost: Matrix, at_cost: float | None = None
) -> dict[str, dict[str, Any]]:
    """Always the best model, always the cheapest, the best single model within ``at_cost``
    (the router's cost; none cheaper: the cheapest), the oracle (per row the cheapest
    model scoring the row's best score) and a random mix of the cheapest and the best
    model costing ``at_cost``."""
    k = len(models)
    singles = [single(quality, cost, i) for i in range(k)]
    best = max(range(k), key=lambda i: (singles[i].quality, -singles[i].cost))
    cheap = min(range(k), key=lambda i: (singles[i].cost, -singles[i].quality))
    out: dict[str, dict[str, Any]] = {
        "always-best": {"model": models[best], **singles[best].as_dict()},
        "always-cheapest": {"model": models[cheap], **singles[cheap].as_dict()},
    }
    q = c = 0.0
    for qs, cs in zip(quality, cost, strict=True):
        top = max(qs)
        i = min((i for i in range(k) if qs[i] == top), key=lambda i: cs[i])
        q += qs[i]
        c += cs[i]
    out["oracle"] = Point(q / max(len(quality), 1), c).as_dict()
    if at_cost is not None:
        within = [i for i in range(k) if singles[i].cost <= at_cost]
        pick = max(within, key=lambda i: singles[i].quality) if within else cheap
        out["best-single"] = {"model": models[pick], **singles[pick].as_dict()}
        lo, hi = singles[cheap], singles[best]
        t = 0.0 if hi.cost <= lo.cost else min(max((at_cost - lo.cost) / (hi.cost - lo.cost), 0), 1)
        mix = Point(lo.quality + t * (hi.quality - lo.quality), lo.cost + t * (hi.cost - lo.cost))
        out["random-mix"] = {"share_of_best": round(t, 4), **mix.as_dict()}
    return out


def cost_quality_svg(
    curve: Sequence[tuple[float, Point]],
    refs: dict[str, dict[str, Any]],
    default: Point | None = None,
    *,
    title: str = "cost vs quality",
) -> str:
    """The router's curve and the reference points, cost on a log axis, as a standalone SVG."""
    import math

    w, h, pad = 640, 420, 56
    pts = [p for _, p in curve]
    ref_pts = [(n, Point(float(r["quality"]), float(r["cost"]))) for n, r in refs.items()]
    costs = [p.cost for p in pts] + [p.cost for _, p in ref_pts]
    quals = [p.quality for p in pts] + [p.quality for _, p in ref_pts]
    lo_c = math.log10(max(min(c for c in costs if c > 0), 1e-9)) if any(costs) else -3
    hi_c = math.log10(max(max(costs), 1e-9))
    if hi_c - lo_c < 1e-6:
        hi_c = lo_c + 1
    lo_q, hi_q = min([*quals, 1.0]) - 0.02, 1.0

    def xy(p: Point) -> tuple[float, float]:
        lc = math.log10(max(p.cost, 10**lo_c))
        x = pad + (lc - lo_c) / (hi_c - lo_c) * (w - 2 * pad)
        y = h - pad - (p.quality - lo_q) / (hi_q - lo_q) * (h - 2 * pad)
        return round(x, 1), round(y, 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">{_esc(title)}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
        f'<text x="{w / 2}" y="{h - 14}" text-anchor="middle">total cost, USD (log)</text>',
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
        'text-anchor="middle">mean quality</text>',
    ]
    for e in range(math.floor(lo_c), math.ceil(hi_c) + 1):
        if lo_c - 1e-9 <= e <= hi_c + 1e-9:
            x, _ = xy(Point(lo_q, 10.0**e))
            out.append(f'<text x="{x}" y="{h - pad + 14}" text-anchor="middle">1e{e}</text>')
    steps = 5
    for i in range(steps + 1):
        qv = lo_q + (hi_q - lo_q) * i / steps
        _, y = xy(Point(qv, 10**lo_c))
        out.append(f'<text x="{pad - 6}" y="{y + 4}" text-anchor="end">{qv:.2f}</text>')
    line = " ".join(f"{x},{y}" for x, y in (xy(p) for p in sorted(pts, key=lambda p: p.cost)))
    out.append(f'<polyline points="{line}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
    for name, p in ref_pts:
        x, y = xy(p)
        out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="#d1242f"/>')
        # Labels near the right edge run leftwards, so they stay inside the picture.
        anchor, dx = ("end", -6) if x > w * 0.7 else ("start", 6)
        out.append(f'<text x="{x + dx}" y="{y - 6}" text-anchor="{anchor}">{_esc(name)}</text>')
    if default is not None:
        x, y = xy(default)
        out.append(
            f'<circle cx="{x}" cy="{y}" r="6" fill="none" stroke="#1f6feb" stroke-width="2"/>'
        )
        out.append(f'<text x="{x + 8}" y="{y + 14}" fill="#1f6feb">router, default bar</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
