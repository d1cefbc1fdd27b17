"""Numbers as the report prints them: a score with the digits its interval supports (Miller 2024,
"Adding Error Bars to Evals"), and counts with their unit."""

from __future__ import annotations

import math


def decimals(lo: float | None, hi: float | None, value: float | None = None) -> int:
    """Decimal places the interval supports: the half-width to one significant digit, two when that
    digit is 1 or 2 (rounding 0.014 to 0.01 would misstate it by a third)."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        v = abs(value) if value else 0.0
        return 3 if v == 0 or not math.isfinite(v) else min(6, max(0, 2 - math.floor(math.log10(v))))
    half = (hi - lo) / 2
    exp = math.floor(math.log10(half))
    lead = half / 10 ** exp
    return min(6, max(0, -exp + (1 if lead < 3 else 0)))


def _fmt(x: float, d: int, signed: bool) -> str:
    x = round(x, d) or 0.0  # no "-0.00"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def format_ci(value: float, lo: float | None = None, hi: float | None = None, signed: bool = False) -> str:
    """0.412 with [0.352, 0.472] -> "0.41 [0.35, 0.47]"; with no interval, three significant digits."""
    if value is None or not math.isfinite(value):
        return "-"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        value = value or 0.0  # no "-0"
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    d = decimals(lo, hi, value)
    return f"{_fmt(value, d, signed)} [{_fmt(lo, d, signed)}, {_fmt(hi, d, signed)}]"


def format_count(n: float, significant: int | None = None) -> str:
    """A parameter or row count with its unit: one decimal before it (53.4K, 134.5M, 1.5B), or
    `significant` digits and never an exponent (130M); below 1,000 the number itself."""
    def num(x: float) -> str:
        return f"{float(f'{x:.{significant}g}'):g}" if significant else f"{x:.1f}"

    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return num(n / scale) + unit
    return num(n) if significant else f"{n:g}"


def format_interval(iv: dict | None, signed: bool = False, value: float | None = None) -> str:
    """`format_ci` of a `summarize` dict; `value` alone when there is no interval."""
    if not iv:
        return format_ci(value, signed=signed) if value is not None else "-"
    return format_ci(iv["value"], iv.get("lo"), iv.get("hi"), signed)
