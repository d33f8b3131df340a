"""Server-side SVG charts: no JavaScript library, nothing fetched, crisp at any size.

Each function returns an ``<svg>`` string sized by its viewBox (it scales to its
container); values are shown on hover through ``<title>`` elements. Floats appear here
for geometry only; every label is formatted by the caller's ``fmt``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final

W: Final = 460
H: Final = 240
#: The size of a chart that spans the whole row.
WIDE: Final = (1100, 300)
PAD_L, PAD_R, PAD_T, PAD_B = 58, 12, 14, 30
PALETTE: Final = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
OTHER_COLOR: Final = "#c9ccd1"

Fmt = Callable[[float], str]


def color(i: int, name: str = "") -> str:
    return OTHER_COLOR if name == "other" else PALETTE[i % len(PALETTE)]


def day_label(ms: int, hourly: bool = False) -> str:
    """ "24 Nov", or for hourly buckets "08:00" (the date at midnight)."""
    d = datetime.fromtimestamp(ms / 1000, UTC)
    if hourly and (d.hour or d.minute):
        return d.strftime("%H:%M")
    return d.strftime("%d %b")


def nice_max(v: float) -> float:
    """A round axis maximum at or above ``v``."""
    if v <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if m * exp >= v:
            return float(m * exp)
    return 10.0 * exp


def _open(label: str, h: int = H, w: int = W) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{escape(label)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]


def _axes(out: list[str], top: float, fmt: Fmt, h: int = H, w: int = W) -> None:
    plot_h = h - PAD_T - PAD_B
    for i in range(5):
        v = top * i / 4
        y = PAD_T + plot_h - plot_h * i / 4
        out.append(
            f'<line class="grid" x1="{PAD_L}" x2="{w - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(v))}</text>"
        )


def _x_labels(out: list[str], buckets: Sequence[int], hourly: bool, h: int = H, w: int = W) -> None:
    n = len(buckets)
    if not n:
        return
    step = max(1, math.ceil(n / (6 if w <= W else 12)))
    if hourly:  # whole multiples of 6 hours, so labels land on 00, 06, 12, 18
        step = max(6, 6 * math.ceil(step / 6))
    slot = (w - PAD_L - PAD_R) / n
    for i in range(0, n, step):
        x = PAD_L + slot * (i + 0.5)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{h - 10}" text-anchor="middle">'
            f"{escape(day_label(buckets[i], hourly))}</text>"
        )


def empty(label: str) -> str:
    out = _open(label, 120)
    out.append(f'<text class="empty" x="{W / 2}" y="64" text-anchor="middle">No data yet</text>')
    return "".join(out) + "</svg>"


def stacked_bars(
    label: str,
    buckets: Sequence[int],
    series: Sequence[tuple[str, Mapping[int, float]]],
    fmt: Fmt,
    *,
    hourly: bool = False,
    line: tuple[str, Mapping[int, float]] | None = None,
    size: tuple[int, int] = (W, H),
) -> str:
    """Bars per bucket stacked by series (in order), with an optional line on top."""
    w, h = size
    if not buckets or not any(any(v for v in s.values()) for _, s in series):
        return empty(label)
    totals = [sum(s.get(b, 0) for _, s in series) for b in buckets]
    peak = max([*totals, *((line[1].get(b, 0) for b in buckets) if line else ())])
    top = nice_max(peak)
    out = _open(label, h, w)
    _axes(out, top, fmt, h, w)
    plot_h = h - PAD_T - PAD_B
    slot = (w - PAD_L - PAD_R) / len(buckets)
    bw = max(1.0, slot * 0.78)
    for i, b in enumerate(buckets):
        x = PAD_L + slot * i + (slot - bw) / 2
        y = float(PAD_T + plot_h)  # stacking upwards
        for j, (name, s) in enumerate(series):
            v = s.get(b, 0)
            if v <= 0:
                continue
            hgt = plot_h * v / top
            y -= hgt
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{hgt:.1f}" '
                f'fill="{color(j, name)}"><title>{escape(day_label(b, hourly))} · '
                f"{escape(name)}: {escape(fmt(v))}</title></rect>"
            )
    if line is not None:
        name, vals = line
        pts = " ".join(
            f"{PAD_L + slot * (i + 0.5):.1f},{PAD_T + plot_h - plot_h * vals.get(b, 0) / top:.1f}"
            for i, b in enumerate(buckets)
        )
        out.append(
            f'<polyline class="line ref" points="{pts}"><title>{escape(name)}</title></polyline>'
        )
    _x_labels(out, buckets, hourly, h, w)
    return "".join(out) + "</svg>"


def lines(
    label: str,
    buckets: Sequence[int],
    series: Sequence[tuple[str, Mapping[int, float | None]]],
    fmt: Fmt,
    *,
    hourly: bool = False,
    log: bool = False,
) -> str:
    """One polyline per series (gaps where a value is None); log scale when asked."""
    vals = [v for _, s in series for v in s.values() if v is not None and v > 0]
    if not buckets or not vals:
        return empty(label)
    top = nice_max(max(vals))
    bottom = 10 ** math.floor(math.log10(min(vals))) if log else 0.0
    if log:
        top = 10 ** math.ceil(math.log10(top))
    plot_h = H - PAD_T - PAD_B
    slot = (W - PAD_L - PAD_R) / len(buckets)

    def y_of(v: float) -> float:
        if log:
            f = (math.log10(max(v, bottom)) - math.log10(bottom)) / (
                math.log10(top) - math.log10(bottom) or 1
            )
        else:
            f = v / top
        return PAD_T + plot_h - plot_h * f

    out = _open(label)
    for i in range(5):
        v = bottom * (top / bottom) ** (i / 4) if log else top * i / 4
        y = y_of(v)
        out.append(
            f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(v))}</text>"
        )
    for j, (name, s) in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, b in enumerate(buckets):
            v = s.get(b)
            if v is None:
                runs.append([])
                continue
            x, y = PAD_L + slot * (i + 0.5), y_of(v)
            runs[-1].append(f"{x:.1f},{y:.1f}")
            out.append(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="2.4" fill="{color(j)}">'
                f"<title>{escape(day_label(b, hourly))} · {escape(name)}: {escape(fmt(v))}"
                "</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                out.append(f'<polyline class="line" stroke="{color(j)}" points="{" ".join(run)}"/>')
    _x_labels(out, buckets, hourly)
    return "".join(out) + "</svg>"


def donut(label: str, items: Sequence[tuple[str, float]], fmt: Fmt) -> str:
    """Shares of a whole as a ring, largest first."""
    total = sum(v for _, v in items if v > 0)
    if total <= 0:
        return empty(label)
    size, r, thick = 220, 84, 30
    cx = cy = size / 2
    out = [
        f'<svg class="chart donut" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    angle = -math.pi / 2
    for i, (name, v) in enumerate(items):
        if v <= 0:
            continue
        frac = v / total
        tip = f"<title>{escape(name)}: {frac:.1%} · {escape(fmt(v))}</title>"
        if frac >= 0.9999:
            out.append(
                f'<circle class="slice" cx="{cx}" cy="{cy}" r="{r}" fill="none" '
                f'stroke="{color(i, name)}" stroke-width="{thick}">{tip}</circle>'
            )
            break
        end = angle + 2 * math.pi * frac
        x0, y0 = cx + r * math.cos(angle), cy + r * math.sin(angle)
        x1, y1 = cx + r * math.cos(end), cy + r * math.sin(end)
        large = 1 if frac > 0.5 else 0
        out.append(
            f'<path class="slice" d="M{x0:.2f},{y0:.2f} A{r},{r} 0 {large} 1 {x1:.2f},{y1:.2f}" '
            f'fill="none" stroke="{color(i, name)}" stroke-width="{thick}">{tip}</path>'
        )
        angle = end
    top = items[0][1] / total if items else 0
    out.append(
        f'<text class="donut-big" x="{cx}" y="{cy + 2}" text-anchor="middle">{top:.0%}</text>'
        f'<text class="donut-small" x="{cx}" y="{cy + 22}" text-anchor="middle">'
        f"{escape(items[0][0])}</text>"
    )
    return "".join(out) + "</svg>"


def legend(names: Sequence[str], colors: Sequence[str] | None = None) -> str:
    """Swatches for ``names``: palette order unless ``colors`` are given ("dash": a line)."""
    items = []
    for i, n in enumerate(names):
        c = colors[i] if colors else color(i, n)
        sw = '<i class="dash"></i>' if c == "dash" else f'<i style="background:{c}"></i>'
        items.append(f"<li>{sw}{escape(n)}</li>")
    return '<ul class="legend">' + "".join(items) + "</ul>"


def swatch(i: int, name: str) -> str:
    return f'<i class="sw" style="background:{color(i, name)}"></i>'


def paired_hbars(label: str, items: Sequence[tuple[str, float, float]], fmt: Fmt) -> str:
    """One row per item: a pale bar for the reference value, a solid one for the actual."""
    rows = [(n, a, r) for n, a, r in items if a > 0 or r > 0]
    if not rows:
        return empty(label)
    row_h, left, right = 26, 150, 70
    h = PAD_T + row_h * len(rows) + 6
    top = nice_max(max(max(a, r) for _, a, r in rows))
    span = W - left - right
    out = _open(label, h)
    for i, (name, actual, ref) in enumerate(rows):
        y = PAD_T + i * row_h
        short = name if len(name) <= 22 else name[:21] + "…"
        wr, wa = span * ref / top, max(1.5, span * actual / top)
        tip = f"{escape(name)}: paid {escape(fmt(actual))}, reference {escape(fmt(ref))}"
        out.append(
            f'<text class="tick label" x="{left - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(short)}</text>"
            f'<rect class="bar ref" x="{left}" y="{y + 3}" width="{wr:.1f}" height="16" rx="3" '
            f'fill="{OTHER_COLOR}"><title>{tip}</title></rect>'
            f'<rect class="bar" x="{left}" y="{y + 3}" width="{wa:.1f}" height="16" rx="3" '
            f'fill="{color(i)}"><title>{tip}</title></rect>'
            f'<text class="tick" x="{left + wr + 6:.1f}" y="{y + 15}">'
            f"{(ref / actual if actual else 0):.0f}×</text>"
        )
    return "".join(out) + "</svg>"
