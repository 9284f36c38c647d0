"""Two atoms (answers without structure): choice letters and text as text, clock times, exact
numbers and decimals to their written precision, else expressions through sympy."""

from __future__ import annotations

import re
from fractions import Fraction

from .normalize import key
from .numeric import clock, number
from .symbolic import expr_equal

_CHOICE_PAREN = re.compile(r"^\(\s*([A-E])\s*\)$")
# Text answers: letters, spaces, hyphens, apostrophes, with at least one word of 2+ letters.
_WORD = re.compile(r"^(?=.*[A-Za-z]{2})[A-Za-z][A-Za-z '\-]*[A-Za-z]$")


def atom_equal(a: str, b: str, rel_tol: float) -> bool:
    if key(a) == key(b):
        return True
    if not a or not b:
        return False
    # Choice letters and text answers are compared as text (never through sympy: "no" is not "on").
    a, b = _CHOICE_PAREN.sub(r"\1", a), _CHOICE_PAREN.sub(r"\1", b)
    if a == b:
        return True
    letter_a, letter_b = re.fullmatch(r"[A-E]", a), re.fullmatch(r"[A-E]", b)
    if letter_a or letter_b:
        return False
    wa, wb = _WORD.match(a), _WORD.match(b)
    if wa or wb:
        return bool(wa and wb) and " ".join(a.lower().split()) == " ".join(b.lower().split())
    ta, tb = clock(a), clock(b)
    if ta is not None or tb is not None:  # 11:00 is a time of day, not the ratio 11/0
        return ta is not None and ta == tb
    na, nb = number(a), number(b)
    if na is not None and nb is not None:
        (va, ua), (vb, ub) = na, nb
        if va == vb:
            return True
        if (ua is None) == (ub is None):
            return False  # both exact, or both decimals as written: only the same value counts
        ulp = ua if ua is not None else ub
        # The decimal must be the exact value rounded or truncated to its last place, and that
        # many places must also carry rel_tol's significant digits (1/3 != 0.33, 7 != 7.0002).
        return abs(va - vb) < ulp and abs(va - vb) <= Fraction(rel_tol) * max(abs(va), abs(vb))
    return expr_equal(a, b, rel_tol)
