"""Exact answers are compared exactly, not to a relative tolerance.

The numeric comparisons of two exact sides (no decimal written on either) accepted differences
under 1e-25 relative (no free symbols) or 1e-9 relative at the probe points (with free symbols),
so 10^100 + 1 graded equal to 10^100, 2^100 x + 1 to 2^100 x and the equation x = 10^30 to
x = 10^30 + 1: a wrong answer scored as right.
The expected verdicts of the integer cases come from Python's own big-integer arithmetic; the
others are written by hand. Decimals keep their stated tolerance (docs/grading.md).
"""

from __future__ import annotations

import pytest

from aci_jax.grading import compare

# (base, exponent, offset): gold is base^exponent, the prediction base^exponent + offset.
POWERS = [(10, 100, 1), (2, 100, 1024), (3, 80, -1), (7, 50, 2), (10, 30, 0), (2, 200, 0),
          (10, 26, 1), (5, 60, -3), (2, 1000, 1), (3, 2000, -2), (2, 3000, 0)]


@pytest.mark.parametrize("base,exp,offset", POWERS)
def test_power_plus_offset(base, exp, offset):
    want = base ** exp == base ** exp + offset  # Python's exact integers are the reference
    gold = f"{base}^{{{exp}}}"
    sign = "+" if offset >= 0 else "-"
    assert compare(gold, f"{base}^{{{exp}}}{sign}{abs(offset)}")[0] is want
    # the same value written out in digits (atoms longer than LIMITS.max_sympy_len are compared
    # as strings, by design: the longest here is 2^1000's 302 digits)
    digits = str(base ** exp + offset)
    if len(digits) <= 350:
        assert compare(gold, digits)[0] is want
        assert compare(digits, gold)[0] is want


@pytest.mark.parametrize("gold,pred,want", [
    # exact numbers without free symbols
    (r"(2^{100}+1)^2", r"2^{200}+2^{101}+1", True),
    (r"(2^{100}+1)^2", r"2^{200}+2^{101}", False),
    (r"\frac{10^{40}+1}{10^{40}}", "1", False),
    (r"2^{10000}", r"2^{10000}+1", False),
    (r"(2^{500}+1)^2", r"2^{1000}+2^{501}+1", True),
    (r"\sqrt{2}\cdot 10^{30}+1", r"\sqrt{2}\cdot 10^{30}", False),
    (r"\pi\cdot 10^{40}", r"\pi\cdot 10^{40}+1", False),
    (r"\sqrt{2}\cdot 10^{30}", r"\frac{2\cdot 10^{30}}{\sqrt{2}}", True),
    (r"\log_2 8", "3", True),                    # exact zeros sympy cannot resolve numerically
    (r"e^{i\pi}", "-1", True),
    (r"\cos^2(1)+\sin^2(1)", "1", True),
    (r"\tan(\frac{\pi}{8})", r"\sqrt{2}-1", True),
    # free symbols: identities stay equal, a +1 on a huge coefficient does not
    (r"2^{100}x", r"2^{100}x+1", False),
    (r"x+10^{10}", r"x+10^{10}+1", False),
    (r"x\sqrt{2}+10^{12}", r"x\sqrt{2}+10^{12}+1", False),
    (r"\sqrt{2}\cdot 2^{100}x+1", r"\sqrt{2}\cdot 2^{100}x", False),
    (r"(x+1)^{3}", r"x^3+3x^2+3x+2", False),
    (r"(x+1)^{3}", r"x^3+3x^2+3x+1", True),
    (r"\frac{x^2-1}{x-1}", "x+1", True),
    (r"\frac{1}{x}+\frac{1}{y}", r"\frac{x+y}{xy}", True),
    (r"(x+\sqrt{2})^2", r"x^2+2\sqrt{2}x+2", True),
    (r"e^{\ln x}", "x", True),
    (r"\tan x", r"\frac{\sin x}{\cos x}", True),
    # equations: proportional (la - ra) and (lb - rb), exactly
    (r"x=10^{30}", r"x=10^{30}+1", False),
    (r"x=2^{1000}", r"x=2^{1000}+1", False),
    (r"3^{5000}x", r"3^{5000}x+1", False),
    (r"y=2^{100}x", r"y=2^{100}x+1", False),
    (r"x^2+y^2=10^{20}", r"x^2+y^2=10^{20}+1", False),
    (r"y=\sqrt{2}x+10^{30}", r"y=\sqrt{2}x+10^{30}+1", False),
    (r"x^2+y^2=10^{20}", r"2x^2+2y^2=2\cdot 10^{20}", True),
    (r"y=\sqrt{2}x", r"\sqrt{2}y=2x", True),
    (r"y=2x+3", r"4x-2y+6=0", True),
    # decimals keep the relative tolerance they were written to
    (r"\frac{1}{3}", "0.333333", True),
    (r"\frac{1}{3}", "0.33", False),
])
def test_exact_sides(gold, pred, want):
    assert compare(gold, pred)[0] is want
    assert compare(pred, gold)[0] is want
