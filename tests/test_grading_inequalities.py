"""The exact sign-analysis solver for one-variable relations (grading/inequalities.py), against
two independent references: the relation evaluated in exact rational arithmetic (Fractions) on a
fine grid that includes every rational critical point, and sympy.solveset where roots are surds."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import sympy

from aci_jax.grading.equiv import compare
from aci_jax.grading.inequalities import solve_chain
from aci_jax.grading.symbolic import Undecided, real_sign

X = sympy.Symbol("x")
OPS = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, "\\leq": lambda a, b: a <= b,
       "\\geq": lambda a, b: a >= b, "\\ne": lambda a, b: a != b}


def _random_side(rng):
    """A side of a relation as (sympy expression, exact Fraction function, rational critical points):
    a constant, a product of rational linear factors, a quotient of two, or |one of those|."""
    def lin():
        r = Fraction(rng.randint(-12, 12), rng.choice([1, 2, 3]))
        return X - sympy.Rational(r.numerator, r.denominator), (lambda t, r=r: t - r), [r]
    kind = rng.choice(["const", "lin", "quad", "quot", "abs"])
    if kind == "const":
        c = Fraction(rng.randint(-9, 9), rng.choice([1, 2]))
        return sympy.Rational(c.numerator, c.denominator), (lambda t, c=c: c), []
    if kind == "lin":
        return lin()
    if kind == "quad":
        (e1, f1, p1), (e2, f2, p2) = lin(), lin()
        k = rng.choice([-2, -1, 1, 3])
        return k * e1 * e2, (lambda t: k * f1(t) * f2(t)), p1 + p2
    if kind == "quot":
        (e1, f1, p1), (e2, f2, p2) = lin(), lin()
        while p2 == p1:         # sympy would cancel (x-r)/(x-r) to 1 and lose the hole at r
            e2, f2, p2 = lin()
        return e1 / e2, (lambda t: f1(t) / f2(t)), p1 + p2
    e, f, p = _random_side(rng)
    while e.has(sympy.Abs):
        e, f, p = _random_side(rng)
    return sympy.Abs(e), (lambda t: abs(f(t))), p


def _truth(sides, ops, t):
    try:
        vals = [f(t) for _, f, _ in sides]
    except ZeroDivisionError:
        return False            # undefined at t: not in the solution set
    return all(OPS[op](vals[i], vals[i + 1]) for i, op in enumerate(ops))


def _member(solution):
    """Exact membership of a rational in a union of intervals and points (sympy's ``contains`` is
    ~1 ms a call): a float comparison decides unless the point is within 1e-9 of an endpoint, and
    then the exact one does."""
    pieces = solution.args if isinstance(solution, sympy.Union) else (solution,)
    bounds = []
    for p in pieces:
        if isinstance(p, sympy.FiniteSet):
            bounds += [(q, q, False, False) for q in p.args]
        elif isinstance(p, sympy.Interval):
            bounds.append((p.start, p.end, p.left_open, p.right_open))
        else:
            assert p == sympy.S.EmptySet, p

    def side(t, end) -> int:       # sign of t - end
        if end in (sympy.oo, -sympy.oo):
            return -1 if end == sympy.oo else 1
        d = float(t) - float(end)
        if abs(d) > 1e-9:
            return 1 if d > 0 else -1
        exact = sympy.Rational(t.numerator, t.denominator) - end
        return 0 if exact == 0 else (1 if exact > 0 else -1)

    def contains(t: Fraction) -> bool:
        for lo, hi, lo_open, hi_open in bounds:
            a, b = side(t, lo), side(t, hi)
            if (a > 0 or (a == 0 and not lo_open)) and (b < 0 or (b == 0 and not hi_open)):
                return True
        return False
    return contains


def test_random_chains_match_exact_rational_evaluation():
    rng = random.Random(0)
    grid = [Fraction(k, 12) for k in range(-15 * 12, 15 * 12 + 1)]   # step 1/12 covers every root above
    checked = solved = 0
    while checked < 80:
        n_rel = rng.choice([1, 1, 2])
        sides = [_random_side(rng) for _ in range(n_rel + 1)]
        ops = [rng.choice(list(OPS)) for _ in range(n_rel)]
        got = solve_chain([s[0] for s in sides], ops, X, sympy)
        checked += 1
        if got is None:
            continue            # outside the class (e.g. |quad| - quot is a cubic): left unsolved
        solved += 1
        member = _member(got)
        for t in grid:
            want = _truth(sides, ops, t)
            assert member(t) == want, (
                [str(s[0]) for s in sides], ops, t, got)
    assert solved >= 50         # the class covers most of these, or the test checks nothing


SURD_CASES = [
    ([X**2 - 2, 0], ["<"]),
    ([X**2 - 3 * X - 1, 0], ["\\geq"]),
    ([sympy.Abs(X**2 - 5), 3], ["<"]),
    ([sympy.Abs(17 * X**2 - 53 * X + 61), sympy.Abs(13 * X**2 + 31 * X - 97)], ["<"]),
    ([(2 * X**2 - 7) / (X**2 + X - 1), 0], ["\\leq"]),
    ([(17 * X - 53) / (13 * X + 31), (23 * X - 71) / (19 * X + 1)], [">"]),
    ([1, X**2 - X, 5], ["<", "\\leq"]),
    ([sympy.Abs((X - 1) / (X + 2)), 2], ["\\geq"]),
    ([X**2 + 1, 0], ["<"]),
    ([X**2 - 2 * X + 1, 0], ["\\leq"]),
    ([X**2 - 2, 0], ["\\ne"]),
    ([sympy.sqrt(2) * X**2 - 1, 0], ["<"]),          # irrational coefficients
    ([2 * X, sympy.pi], ["\\geq"]),
]


@pytest.mark.parametrize("parts,ops", SURD_CASES)
def test_surd_endpoints_match_solveset(parts, ops):
    got = solve_chain(parts, ops, X, sympy)
    assert got is not None
    rel = {"<": sympy.StrictLessThan, ">": sympy.StrictGreaterThan, "\\leq": sympy.LessThan,
           "\\geq": sympy.GreaterThan, "\\ne": sympy.Unequality}
    want = sympy.S.Reals
    for i, op in enumerate(ops):
        want = sympy.Intersection(want, sympy.solveset(rel[op](parts[i], parts[i + 1]), X, sympy.S.Reals))
    assert sympy.Complement(got, want).simplify() == sympy.S.EmptySet, (got, want)
    assert sympy.Complement(want, got).simplify() == sympy.S.EmptySet, (got, want)


def test_outside_the_class_is_left_unsolved():
    assert solve_chain([X**3 - 2, 0], ["<"], X, sympy) is None                     # cubic
    assert solve_chain([(X**2 - 5) / (X**2 + 3), (2 * X**2 - 7) / (X**2 + 1)], ["<"], X, sympy) is None  # quartic
    assert solve_chain([sympy.sin(X), 0], ["<"], X, sympy) is None
    three = sympy.Abs(X - 1) + sympy.Abs(X - 2) + sympy.Abs(X - 3)
    assert solve_chain([three, 4], ["<"], X, sympy) is None                          # 2^3 sign cases
    assert solve_chain([sympy.Abs(sympy.Abs(X) - 1), 2], ["<"], X, sympy) is None    # nested


@pytest.mark.parametrize("gold,pred,equal", [
    ("x^2 - 2 < 0", r"(-\sqrt{2}, \sqrt{2})", True),
    ("x^2 - 2 < 0", r"[-\sqrt{2}, \sqrt{2}]", False),
    (r"|x^2-5| < 3", r"(-2\sqrt{2}, -\sqrt{2}) \cup (\sqrt{2}, 2\sqrt{2})", True),
    (r"|x^2-5| < 3", r"(-2\sqrt{2}, 2\sqrt{2})", False),
    (r"\frac{x-1}{x+2} \le 0", "(-2,1]", True),
    (r"\frac{x-1}{x+2} \le 0", "[-2,1]", False),
    (r"\frac{x^2-4}{x-2} < 5", r"(-\infty,2) \cup (2,3)", True),   # the hole at 2 survives cancelling
    (r"\frac{x^2-4}{x-2} < 5", r"(-\infty,3)", False),
    (r"x^2 \geq 0", r"(-\infty,\infty)", True),
    (r"2x < \sqrt{2}", r"x < \frac{\sqrt{2}}{2}", True),
    (r"2x < \sqrt{2}", r"(-\infty, \frac{1}{\sqrt{2}})", True),
    (r"x^2 \leq 0", r"(-\infty,\infty)", False),
    # One endpoint spelled two ways (sqrt(2)/2 and 1/sqrt(2)): sympy's structural set algebra
    # called the first pair equal (an "empty" open interval between the two spellings).
    (r"2x \leq \sqrt{2}", r"(-\infty, \frac{1}{\sqrt{2}})", False),
    (r"[0, \frac{\sqrt{2}}{2}) \cup (\frac{1}{\sqrt{2}}, 1]", "[0,1]", False),
    (r"[0, \frac{\sqrt{2}}{2}] \cup (\frac{1}{\sqrt{2}}, 1]", "[0,1]", True),
    (r"(\ln 6, 7)", r"(\ln 2 + \ln 3, 7)", True),
    (r"(\ln 6, 7)", r"(\ln 2 + \ln 4, 7)", False),
    (r"x > 1 \text{ and } x < \sqrt{2}", r"(1, \frac{2}{\sqrt{2}}]", False),
    (r"x > 1 \text{ and } x \leq \sqrt{2}", r"(1, \frac{2}{\sqrt{2}}]", True),
])
def test_compare_reads_relations_and_sets_exactly(gold, pred, equal):
    assert compare(gold, pred) == (equal, "ok")
    assert compare(pred, gold) == (equal, "ok")


def test_real_sign_is_exact_or_refuses():
    with sympy.evaluate(False):
        two_spellings = sympy.sqrt(2) / 2 - 1 / sympy.sqrt(2)
        log_zero = sympy.log(6) - sympy.log(2) - sympy.log(3)
    assert real_sign(two_spellings, sympy) == 0
    assert real_sign(log_zero, sympy) == 0
    # Nonzero however small: 60 correct digits of the number, not of its distance from 0.
    assert real_sign(sympy.Integer(10) ** -50, sympy) == 1
    assert real_sign(sympy.sqrt(2) - sympy.Rational(14142135623730950488016887242096980785697, 10**40), sympy) == -1
    assert real_sign(sympy.pi - sympy.Rational(314159265358979323846264338327950288419716939937510582097494459, 10**62), sympy) == 1
    assert real_sign(-sympy.oo, sympy) == -1
    with pytest.raises(Undecided):
        real_sign(sympy.Symbol("y"), sympy)
    with pytest.raises(Undecided):
        real_sign(sympy.I, sympy)
