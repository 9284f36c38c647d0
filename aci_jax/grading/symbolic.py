"""Expressions through sympy, under guards: parsing an atom with the LaTeX parser (cached and
charged to the comparison's work budget), refusing trees too large to evaluate, and deciding
equality by exact evaluation, numeric evaluation at 40 digits, or random probes of free symbols."""

from __future__ import annotations

import math
import random
import re

from .limits import LIMITS, WORK, Refused
from .normalize import brace_stats
from .numeric import DIGIT_SPACE_DIGIT, close, decimal_rel

_sympy = None


def load_sympy():
    """Import sympy + the LaTeX parser lazily (workers pay this once at start-up)."""
    global _sympy
    if _sympy is None:
        import sympy
        from latex2sympy2_extended import latex2sympy
        from latex2sympy2_extended.latex2sympy2 import ConversionConfig
        from latex2sympy2_extended.math_normalization import NormalizationConfig

        cfg = ConversionConfig(interpret_as_mixed_fractions=True, interpret_simple_eq_as_assignment=False,
                               interpret_contains_as_eq=True, lowercase_symbols=False)
        ncfg = NormalizationConfig(basic_latex=True, units=False, malformed_operators=False, nits=False,
                                   boxed="none", equations=False)

        def parse(text):
            with sympy.evaluate(False):
                return latex2sympy(text, normalization_config=ncfg, conversion_config=cfg)

        _sympy = (sympy, parse)
    return _sympy


def parse_or_none(s: str):
    """The LaTeX parser's sympy object for `s`, or None when it cannot read it (it raises bare
    Exception on malformed LaTeX, and RecursionError, also an Exception, on deep nesting)."""
    try:
        return load_sympy()[1](s)
    except Exception:
        return None


GROWTH = ("exp", "sinh", "cosh", "factorial", "factorial2", "gamma", "binomial", "subfactorial")


def log10_bound(e, sympy) -> float:
    """Crude upper bound on |log10|e|| for a numeric sympy tree, i.e. how many orders of magnitude
    ``e`` may be away from 1 in either direction (inf when astronomically large or small)."""
    if e.is_Integer:
        n = abs(int(e))
        return math.log10(n) if n > 1 else 0.0
    if e.is_Rational:
        return max(log10_bound(sympy.Integer(e.p), sympy), log10_bound(sympy.Integer(e.q), sympy))
    if e.is_Float:
        return abs(math.log10(abs(float(e)))) if e != 0 and math.isfinite(float(e)) else 0.0
    if e.is_Number or e.is_NumberSymbol or e is sympy.I:
        return 1.0
    name = e.func.__name__
    if e.is_Pow:
        b, x = e.args
        lb, lx = log10_bound(b, sympy), log10_bound(x, sympy)
        return math.inf if lx > 7 else max(lb, 1.0) * 10 ** lx
    if name in GROWTH:
        lx = max((log10_bound(a, sympy) for a in e.args), default=1.0)
        return math.inf if lx > 7 else (10 ** lx) * max(lx, 1.0)
    if e.is_Mul:
        return sum(log10_bound(a, sympy) for a in e.args)
    return max((log10_bound(a, sympy) for a in e.args), default=1.0) + 1


def guard(expr, sympy) -> None:
    """Raise Refused for trees that would take unbounded time or memory to evaluate."""
    count = 0
    for node in sympy.preorder_traversal(expr):
        count += 1
        if count > 2000:
            raise Refused("too many nodes")
        if (node.is_Pow or node.func.__name__ in GROWTH) and node.is_number:
            if log10_bound(node, sympy) > LIMITS.max_pow_log10:
                raise Refused("value too large to evaluate")
        # x^(huge): probing at |x| > 1 would be astronomically large as well.
        if node.is_Pow and not node.is_number and node.args[1].is_number:
            if log10_bound(node.args[1], sympy) > 6:
                raise Refused("exponent too large")


def to_sympy(s: str):
    """Parse an atom with the LaTeX parser under the static guards; None when not parseable.
    Each distinct string is parsed once per comparison (``WORK``)."""
    hit = WORK.parsed.get(s, _MISSING)
    if hit is not _MISSING:
        if isinstance(hit, Refused):
            raise hit
        return hit
    try:
        e = _to_sympy_uncached(s)
    except Refused as refused:
        WORK.parsed[s] = refused
        raise
    WORK.parsed[s] = e
    return e


_MISSING = object()


def _to_sympy_uncached(s: str):
    if len(s) > LIMITS.max_sympy_len or re.search(r"\d{%d,}" % (LIMITS.max_digits + 1), s):
        return None
    depth, ok = brace_stats(s)
    if depth > LIMITS.max_brace_depth or not ok:
        return None
    if s.count("^") > 12 or DIGIT_SPACE_DIGIT.search(s):
        return None  # "2 1/4" would be read as 21/4
    WORK.charge(len(s))
    sympy = load_sympy()[0]
    e = parse_or_none(s)
    if isinstance(e, list) or not isinstance(e, sympy.Expr):
        return None
    # MATH's i is the imaginary unit.
    syms = {x for x in e.free_symbols if x.name == "i"}
    if syms:
        with sympy.evaluate(False):
            e = e.xreplace({x: sympy.I for x in syms})
    guard(e, sympy)
    return _real_odd_roots(e, sympy)


def _real_odd_roots(e, sympy):
    """An odd root of a negative number is the real one, as in school algebra: \\sqrt[3]{-8} = -2
    (sympy's principal root would be the complex 1 + 1.73i)."""
    def exponent(p):  # parsed unevaluated: 1/3 arrives as Pow(3, -1)
        x = p.exp
        return x if x.is_Rational else (x.doit() if x.is_number and len(str(x)) < 40 else x)

    def odd_root_of_negative(p):
        if not (p.is_Pow and p.base.is_number and bool(p.base.is_extended_negative)):
            return False
        x = exponent(p)
        return bool(x.is_Rational) and not x.is_Integer and x.q % 2 == 1

    found = [(p, exponent(p)) for p in sympy.preorder_traversal(e) if odd_root_of_negative(p)]
    if not found:
        return e
    with sympy.evaluate(False):  # (exponents computed above: under evaluate(False) 1/3 stays Pow(3, -1))
        return e.xreplace({p: sympy.Mul(-1 if x.p % 2 else 1, sympy.Pow(sympy.Mul(-1, p.base), x)) for p, x in found})


def evalf(e, sympy, prec: int = 40):
    """``e`` as an mpmath complex at ``prec`` digits; None if not a finite number."""
    import mpmath

    v = e.evalf(prec)
    if not v.is_number or v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) or v.free_symbols:
        return None
    parts = []
    for x in v.as_real_imag():
        x = x.evalf(prec)
        if not x.is_Number:
            return None
        parts.append(mpmath.mpf(x._mpf_) if isinstance(x, sympy.Float) else mpmath.mpf(int(x)) if x.is_Integer
                     else mpmath.mpf(sympy.Float(x, prec)._mpf_))
    z = mpmath.mpc(*parts)
    return z if mpmath.isfinite(z) else None


class Undecided(Exception):
    """sympy cannot tell this number from zero: the caller must not guess."""


def real_sign(value, sympy) -> int:
    """Sign (-1, 0, 1) of a real number, exact: 0 only when ``expand`` makes it exactly 0 (canonical
    for rationals and quadratic surds) or sympy proves it zero (``equals``); +-1 from sympy's
    strict 60-digit evaluation, which either reaches 60 correct digits of a nonzero number (so
    its sign is right however small it is) or says it cannot tell it from zero. Infinities by
    sign. Raises Undecided otherwise (a zero sympy cannot prove, a non-real number)."""
    if value in (sympy.oo, -sympy.oo):
        return 1 if value == sympy.oo else -1
    v = sympy.expand(value)
    if v == 0:
        return 0
    if v.is_Rational:
        return 1 if v > 0 else -1
    if v.is_extended_real is False or v.free_symbols:
        raise Undecided(str(value)[:80])
    try:
        approx = v.evalf(60, strict=True)
    except (sympy.core.evalf.PrecisionExhausted, ValueError, TypeError):
        approx = None
    if approx is not None and approx.is_Number and approx.is_real and approx != 0:
        return 1 if approx > 0 else -1
    if v.equals(0):
        return 0
    raise Undecided(str(value)[:80])


def _undefined(e, sympy) -> bool:
    """A division by zero or an indeterminate form anywhere in ``e``."""
    if e.has(sympy.zoo, sympy.nan):
        return True
    return any(p.is_Pow and p.args[0] == 0 and p.args[1].is_number and bool(p.args[1].is_negative)
               for p in sympy.preorder_traversal(e))


def _has_float(e, sympy) -> bool:
    return any(isinstance(a, sympy.Float) for a in sympy.preorder_traversal(e))


def _exact_points(free, sympy, n: int = 3) -> list[dict]:
    """Rational points for the exact checks ([{}] without free symbols)."""
    if not free:
        return [{}]
    rng = random.Random(4321)
    names = sorted(free, key=lambda x: x.name)
    return [{x: sympy.Rational(rng.choice([1, -1]) * rng.randint(3, 97), rng.randint(2, 31)) for x in names}
            for _ in range(n)]


def _differ_exactly(ea, eb, free, sympy) -> bool:
    """Proof that two exact sides differ: at a rational point sympy's strict evaluation gives a
    nonzero real difference. The numeric tests decide at a relative tolerance (1e-25 without free
    symbols, 1e-9 at the probe points), which cannot see 10^100 + 1 against 10^100, or 2^100 x + 1
    against 2^100 x; this can, and it never makes two sides equal."""
    for pt in _exact_points(free, sympy):
        with sympy.evaluate(False):
            diff = sympy.Add(ea.xreplace(pt), sympy.Mul(-1, eb.xreplace(pt)))
        if _provably_nonzero(diff, sympy):
            return True
    return False


def _provably_nonzero(d, sympy) -> bool:
    """sympy's strict evaluation reached 50 correct digits of a nonzero real `d` (it raises
    PrecisionExhausted on an exact zero it cannot resolve, such as log_2 8 - 3). Its working
    precision may grow to `d`'s magnitude in digits and 100 more (at most 20,000): resolving
    2^1000 + 1 - 2^1000 takes 302 digits."""
    try:
        maxn = int(min(log10_bound(d, sympy) + 100, 20000))
        v = d.evalf(50, strict=True, maxn=maxn)
    except (sympy.core.evalf.PrecisionExhausted, ArithmeticError, ValueError, TypeError):
        return False
    return bool(v.is_Number and v.is_real and v != 0)


def expr_equal(a: str, b: str, rel_tol: float) -> bool:
    """Symbolic/numeric equality of two atoms through sympy (False when either side cannot be parsed)."""
    try:
        ea, eb = to_sympy(a), to_sympy(b)
    except Refused:
        return False
    if ea is None or eb is None:
        return False
    sympy = load_sympy()[0]
    if _undefined(ea, sympy) or _undefined(eb, sympy):
        return False  # 3/0 is not 5/0: an undefined value equals nothing (but the same string)
    if ea == eb:
        return True
    approx = _has_float(ea, sympy) or _has_float(eb, sympy)
    free = ea.free_symbols | eb.free_symbols
    # exact sides: equal at 40 digits means equal; decimals: no looser than they were written
    tol = min(rel_tol, decimal_rel(a), decimal_rel(b)) if approx else 1e-25
    try:
        if not _numerically_equal(ea, eb, free, approx, tol, sympy):
            return False
        return approx or not _differ_exactly(ea, eb, free, sympy)
    except (Refused, ArithmeticError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def _numerically_equal(ea, eb, free, approx: bool, tol: float, sympy) -> bool:
    """Equal to `tol` relative (exact sides without free symbols: their difference at 50 digits
    within 1e-25 of the larger); with free symbols, at random real points (`_probe_equal`)."""
    if not free:
        if any(x.has(sympy.oo, -sympy.oo, sympy.zoo) for x in (ea, eb)):
            return ea == eb
        va, vb = evalf(ea, sympy), evalf(eb, sympy)
        if va is None or vb is None:
            return False
        if not approx:  # exact values: sympy evaluates the difference itself (adaptive, 50 digits)
            hi = evalf(sympy.Add(ea, sympy.Mul(-1, eb, evaluate=False), evaluate=False), sympy, 50)
            if hi is None:
                return False
            scale = max(abs(va), abs(vb))
            return bool(abs(hi) <= 1e-25 * scale) if scale else bool(abs(hi) == 0)
        return close(va, vb, tol)
    return _probe_equal(ea, eb, free, tol, sympy)


def _probes(free, n: int = 5):
    rng = random.Random(1234)
    names = sorted(free, key=lambda x: x.name)
    return [{x: rng.choice([1, -1]) * (0.37 + 2.3 * rng.random()) for x in names} for _ in range(n)]


def _value_at(e, point, sympy):
    with sympy.evaluate(False):
        v = e.xreplace({k: sympy.Float(val, 30) for k, val in point.items()})
    return evalf(v, sympy, 30)


def _probe_equal(ea, eb, free, tol, sympy) -> bool:
    """Identity test: equal values at 5 random real points (points where either side is
    undefined skipped)."""
    seen = 0
    for pt in _probes(free, 8):
        va, vb = _value_at(ea, pt, sympy), _value_at(eb, pt, sympy)
        if va is None or vb is None:
            continue
        seen += 1
        if not close(va, vb, max(tol, 1e-9)):
            return False
        if seen >= 5:
            break
    return seen >= 3


def relation_equal(la: str, ra: str, lb: str, rb: str, rel_tol: float) -> bool:
    """Equations lhs_a = rhs_a and lhs_b = rhs_b are the same when (la-ra) = c (lb-rb) for a constant c != 0."""
    try:
        parts = [to_sympy(x) for x in (la, ra, lb, rb)]
    except Refused:
        return False
    if any(p is None for p in parts):
        return False
    sympy = load_sympy()[0]
    da = sympy.Add(parts[0], sympy.Mul(-1, parts[1], evaluate=False), evaluate=False)
    db = sympy.Add(parts[2], sympy.Mul(-1, parts[3], evaluate=False), evaluate=False)
    free = da.free_symbols | db.free_symbols
    if not free:
        return False
    ratio = None
    seen = 0
    for pt in _probes(free, 8):
        va, vb = _value_at(da, pt, sympy), _value_at(db, pt, sympy)
        if va is None or vb is None or abs(vb) < 1e-12:
            continue
        r = va / vb
        if ratio is None:
            if abs(r) < 1e-12:
                return False
            ratio = r
        elif not close(r, ratio, 1e-9):
            return False
        seen += 1
    if seen < 3:
        return False
    return _has_float(da, sympy) or _has_float(db, sympy) or not _exactly_not_proportional(da, db, free, sympy)


def _exactly_not_proportional(da, db, free, sympy) -> bool:
    """Proof that exact sides are not proportional: at two rational points the cross product
    da(p) db(q) - da(q) db(p) is nonzero by sympy's strict evaluation. The ratio test
    above works to 1e-9 relative, under which x = 10^30 and x = 10^30 + 1 are the same line."""
    with sympy.evaluate(False):
        at = [(da.xreplace(pt), db.xreplace(pt)) for pt in _exact_points(free, sympy)]
    for (a1, b1), (a2, b2) in zip(at, at[1:]):
        with sympy.evaluate(False):
            cross = sympy.Add(sympy.Mul(a1, b2), sympy.Mul(-1, a2, b1))
        if _provably_nonzero(cross, sympy):
            return True
    return False
