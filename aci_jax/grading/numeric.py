"""Plain numbers and times of day written as answers: exact literals (integers, fractions, mixed
numbers, repeating decimals) and decimals with the precision they were written to, and clock times."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from .limits import LIMITS

_INT = re.compile(r"^[+-]?\d+$")
_DEC = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_SCI = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\\(?:times|cdot) ?10\^)\{?([+-]?\d{1,4})\}?$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
# Two numbers side by side ("2 1/4", "12 345"); a subscript or exponent before the space is fine (\log_2 8).
DIGIT_SPACE_DIGIT = re.compile(r"(?:^|[^\d_^])\d+ \d")
_DEC_LIT = re.compile(r"(?<![\d.])\d{0,30}\.\d{1,30}")
_REPEATING = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d{1,30})\}$")
_MIXEDN = re.compile(r"^([+-]?)\((\d+)\+\\frac\{(\d+)\}\{(\d+)\}\)$")


def _places(digits: str) -> int:
    """Digits after the decimal point of a literal such as ``12.50`` (0 when there is none)."""
    return len(digits.split(".", 1)[1]) if "." in digits else 0


def number(s: str) -> tuple[Fraction, Fraction | None] | None:
    """(value, ulp) for plain numeric literals; None otherwise.

    ``ulp`` is None for exact literals (integers, fractions) and the unit in the last written place
    for decimals (``3.14`` -> 1/100, ``1.5e3`` -> 100): a decimal stands for every value that it
    rounds or truncates to, and nothing further away.
    """
    if DIGIT_SPACE_DIGIT.search(s):
        return None  # "2 1/4" is not 21/4; spaced digits are handled by normalisation or not at all
    s = s.replace(" ", "")
    if len(s) > LIMITS.max_digits or not s:
        return None
    if _INT.match(s):
        return Fraction(int(s)), None
    if _DEC.match(s):
        return Fraction(s), Fraction(1, 10 ** _places(s))
    m = _SCI.match(s)
    if m:
        exp = int(m.group(2))
        v = Fraction(m.group(1)) * Fraction(10) ** exp
        return v, (None if "." not in m.group(1) else Fraction(10) ** (exp - _places(m.group(1))))
    m = _FRAC.match(s) or _SLASH.match(s)
    if m:
        g = m.groups()
        sign, num, den = ("", g[0], g[1]) if len(g) == 2 else g
        if int(den) == 0:
            return None
        v = Fraction(int(num), int(den))
        return (-v if sign == "-" else v), None
    m = _MIXEDN.match(s)
    if m:
        sign, w, num, den = m.groups()
        if int(den) == 0:
            return None
        v = int(w) + Fraction(int(num), int(den))
        return (-v if sign == "-" else v), None
    m = _REPEATING.match(s)
    if m:  # 0.\overline{3} = 1/3, 1.2\overline{45}
        sign, whole, fixed, rep_ = m.groups()
        v = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
        v += Fraction(int(rep_), (10 ** len(rep_) - 1) * 10 ** len(fixed))
        return (-v if sign == "-" else v), None
    return None


def decimal_rel(s: str) -> float:
    """The relative precision of the least precise decimal literal written in ``s`` (inf if none):
    ``3.14`` -> 0.01 / 3.14. A decimal is compared no more loosely than it was written."""
    best = math.inf
    for m in _DEC_LIT.finditer(s):
        v = float(m.group(0))
        if v:
            best = min(best, 10.0 ** -_places(m.group(0)) / v)
    return best


def close(a, b, rel_tol: float) -> bool:
    """|a - b| <= rel_tol * max(|a|, |b|) for Python or mpmath numbers."""
    return bool(abs(a - b) <= rel_tol * max(abs(a), abs(b)))


_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))? ?(?:([AaPp])\.? ?[Mm]\.?)?$")
_CLOCK_H = re.compile(r"^(\d{1,2}) ?([AaPp])\.? ?[Mm]\.?$")


def clock(s: str) -> int | None:
    """Seconds after midnight for a time of day (``14:05``, ``14:05:00``, ``2:05 P.M.``, ``2 pm``)."""
    m = _CLOCK.match(s)
    if m:
        h, mi, sec, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4)
    else:
        m = _CLOCK_H.match(s)
        if not m:
            return None
        h, mi, sec, half = int(m.group(1)), 0, 0, m.group(2)
    if mi > 59 or sec > 59:
        return None
    if half:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if half in "Pp" else 0)
    elif h > 24 or (h == 24 and (mi or sec)):
        return None
    return (h % 24) * 3600 + mi * 60 + sec
