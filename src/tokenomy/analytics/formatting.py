"""Numbers for people: compact token counts and money from integer nanos."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Final

SYMBOLS: Final = {"USD": "$", "CNY": "¥", "EUR": "€", "GBP": "£"}
_SUFFIXES: Final = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k"))


def compact(n: float) -> str:
    """1234567 -> "1.2M" (display only)."""
    a = abs(n)
    for size, suffix in _SUFFIXES:
        if a >= size:
            v = n / size
            return f"{v:.1f}{suffix}" if abs(v) < 100 else f"{v:.0f}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() or a >= 10 else f"{n:.1f}"


def money(nanos: int, currency: str | None, places: int = 2) -> str:
    """Integer nanos as "$1,234.57" (rounded half-up for display; no float involved).

    An amount under a cent keeps two significant digits ("$0.0042"), down to the nano:
    a small spend is never shown as nothing.
    """
    exact = Decimal(int(nanos)).scaleb(-9)
    if nanos and abs(exact) < Decimal(1).scaleb(-places):
        places = min(9, 1 - exact.adjusted())
    units = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sym = SYMBOLS.get(currency or "", "")
    text = f"{units:,f}"
    if not sym:
        return f"{text} {currency}" if currency else text
    return f"-{sym}{text[1:]}" if text.startswith("-") else f"{sym}{text}"


def money_compact(nanos: float, currency: str | None) -> str:
    """An axis label: "$1.2k", "$35", "$0.42"."""
    units = round(nanos) / 10**9  # display only
    sym = SYMBOLS.get(currency or "", "")
    if abs(units) >= 1000:
        return sym + compact(units)
    if abs(units) >= 10 or units == 0:
        return f"{sym}{units:.0f}"
    return f"{sym}{units:.2f}"


def money_map(costs: dict[str, int]) -> str:
    """{"USD": n, "CNY": m} as "$1.00 + ¥2.00"."""
    parts = [money(v, c) for c, v in sorted(costs.items()) if v]
    return " + ".join(parts) if parts else money(0, "USD")


def ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.1%}" if signed else f"{v:.1%}"
