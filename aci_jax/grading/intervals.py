"""Answers that are sets of real numbers: intervals, unions and intersections of them, and
one-variable inequalities (bounds read directly, or the chain solved over the reals)."""

from __future__ import annotations

import functools
import re

from .inequalities import solve_chain
from .limits import WORK, Refused
from .normalize import key
from .numeric import number
from .parse import VAR, Node
from .symbolic import Undecided, evalf, load_sympy, real_sign, to_sympy

def as_set(node: Node):
    """A sympy set for interval-like nodes (intervals, unions, one-variable inequalities); None otherwise."""
    sympy = load_sympy()[0]
    if node.kind == "seq" and len(node.items) == 2 and node.brackets in ("()", "[]", "[)", "(]"):
        lo, hi = (_endpoint(n) for n in node.items)
        if lo is None or hi is None:
            return None
        try:
            return sympy.Interval(lo, hi, left_open=node.brackets[0] == "(", right_open=node.brackets[1] == ")")
        except (TypeError, ValueError):
            return None
    if node.kind in ("union", "inter"):
        sets = _all_sets(node.items)
        if sets is None:
            return None
        return union(sets, sympy) if node.kind == "union" else sympy.Intersection(*sets)
    if node.kind == "ineq":
        return _ineq_set(node.text)
    if node.kind == "set" and node.items and all(n.kind == "ineq" for n in node.items):
        sets = _all_sets(node.items)  # "x < -1 or x > 2"
        if sets is None:
            return None
        return union(sets, sympy)
    if node.kind == "atom" and key(node.text) in ("\\varnothing", "\\{\\}", "\\mathbb{R}", "(-\\infty,\\infty)"):
        return sympy.S.EmptySet if "varnothing" in node.text or node.text == "\\{\\}" else sympy.S.Reals
    return None


def union(sets: list, sympy):
    """``sympy.Union(*sets)``, merged first by one sort and sweep (``_pieces``): sympy's own
    simplification compares every pair (1,000 intervals took over a second)."""
    pieces = _pieces(sympy.Union(*sets, evaluate=False), sympy)
    if pieces is None:
        return sympy.Union(*sets)
    return _as_sympy(pieces, sympy)


def sets_equal(a, b, sympy) -> bool:
    """Two real sets are the same set: their canonical pieces (disjoint, sorted, merged; see
    ``_pieces``) agree endpoint by endpoint, each endpoint compared exactly (``real_sign``).

    Not ``a.symmetric_difference(b).is_empty``: sympy compares endpoints structurally, so
    ``[.., sqrt(2)/2]`` against ``(.., 1/sqrt(2))`` came out as the open interval between the two
    spellings of one number, "empty", and a closed bound graded equal to an open one. Sets this
    cannot decompose, or an endpoint sympy cannot order, are equal only when identical."""
    pa, pb = _pieces(a, sympy), _pieces(b, sympy)
    if pa is None or pb is None:
        return bool(a == b)
    try:
        return len(pa) == len(pb) and all(
            _order(x[0], y[0], sympy) == 0 and _order(x[1], y[1], sympy) == 0
            and x[2:] == y[2:] for x, y in zip(pa, pb))
    except Undecided:
        return bool(a == b)


def _order(a, b, sympy) -> int:
    """Exact -1/0/1 comparison of two endpoints (numbers or +-oo); raises Undecided."""
    return 0 if a == b else real_sign(a - b, sympy)


def _pieces(s, sympy) -> list | None:
    """``s`` as sorted disjoint pieces ``(lo, hi, lo_open, hi_open)`` (a point is ``(q, q, False,
    False)``), touching pieces merged, empty ones dropped; None for sets that are not finite unions
    of intervals and real points, or whose endpoints cannot be ordered exactly."""
    raw = []
    stack = [s]
    while stack:
        t = stack.pop()
        if isinstance(t, sympy.Union):
            stack.extend(t.args)
        elif t == sympy.S.EmptySet:
            continue
        elif t == sympy.S.Reals:
            raw.append((-sympy.oo, sympy.oo, True, True))
        elif isinstance(t, sympy.Interval):
            raw.append((t.start, t.end, bool(t.left_open), bool(t.right_open)))
        elif isinstance(t, sympy.FiniteSet) and all(q.is_number for q in t.args):
            raw.extend((q, q, False, False) for q in t.args)
        else:
            return None
    try:
        def order(a, b) -> int:
            return _order(a, b, sympy)

        def before(x, y) -> int:   # by left endpoint, a closed one first
            return order(x[0], y[0]) or (int(x[2]) - int(y[2]))

        raw = [p for p in raw if order(p[0], p[1]) < 0 or (order(p[0], p[1]) == 0 and not (p[2] or p[3]))]
        raw.sort(key=functools.cmp_to_key(before))
        out = []
        for lo, hi, lo_open, hi_open in raw:
            if out:
                plo, phi, plo_open, phi_open = out[-1]
                c = order(lo, phi)
                if c < 0 or (c == 0 and not (lo_open and phi_open)):   # overlapping or touching
                    e = order(hi, phi)
                    if e > 0 or (e == 0 and phi_open and not hi_open):
                        out[-1] = (plo, hi, plo_open, hi_open)
                    continue
            out.append((lo, hi, lo_open, hi_open))
    except (Undecided, TypeError):
        return None
    return out


def _as_sympy(pieces: list, sympy):
    """Disjoint sorted pieces as one sympy set, not re-merged by sympy (which compares endpoints
    structurally: ``[0, sqrt(2)/2)`` and ``(1/sqrt(2), 1]`` became ``[0, 1]``)."""
    sets = [sympy.FiniteSet(lo) if lo == hi and not (lo_open or hi_open)
            else sympy.Interval(lo, hi, lo_open, hi_open) for lo, hi, lo_open, hi_open in pieces]
    if not sets:
        return sympy.S.EmptySet
    return sets[0] if len(sets) == 1 else sympy.Union(*sets, evaluate=False)


def _all_sets(nodes) -> list | None:
    """``as_set`` of every node, or None as soon as one is not a set (without computing the rest)."""
    out = []
    for n in nodes:
        x = as_set(n)
        if x is None:
            return None
        out.append(x)
    return out


def _endpoint(node: Node):
    if node.kind != "atom":
        return None
    sympy = load_sympy()[0]
    t = key(node.text)
    if t in ("\\infty", "+\\infty"):
        return sympy.oo
    if t == "-\\infty":
        return -sympy.oo
    n = number(t)
    if n is not None:
        return sympy.Rational(n[0].numerator, n[0].denominator)
    try:
        e = to_sympy(t)
    except Refused:
        return None
    if e is None or e.free_symbols:
        return None
    v = evalf(e, sympy)
    if v is None or abs(v.imag) > 0:
        return None
    return e


_REL_SPLIT = re.compile(r"(\\leq|\\geq|<|>|\\ne(?![a-zA-Z]))")


def _ineq_set(s: str):
    """One-variable chain like ``-2 \\leq x < 5`` or ``x > 3`` as a sympy Interval; other
    one-variable chains (``-x < -2``, ``1 < |z| \\le 2``, ``x \\ne 3``) are solved over the reals."""
    sympy = load_sympy()[0]
    tokens = _REL_SPLIT.split(s)
    if len(tokens) not in (3, 5):
        return None
    exprs, ops = tokens[0::2], tokens[1::2]
    var_idx = [i for i, e in enumerate(exprs) if VAR.match(e.strip())]
    if len(var_idx) != 1 or "\\ne" in ops:
        return _solve_chain(exprs, ops)
    vi = var_idx[0]
    lo, hi, lo_open, hi_open = -sympy.oo, sympy.oo, True, True
    for i, op in enumerate(ops):
        if vi not in (i, i + 1):
            return None
        var_right = i + 1 == vi  # left OP x, else x OP right
        bound = _endpoint(Node("atom", exprs[i if var_right else i + 1].strip()))
        if bound is None:
            return None
        # left < x and x > right bound x from below; left > x and x < right from above.
        if (op in ("<", "\\leq")) == var_right:
            lo, lo_open = bound, op in ("<", ">")
        else:
            hi, hi_open = bound, op in ("<", ">")
    try:
        return sympy.Interval(lo, hi, left_open=lo_open, right_open=hi_open)
    except (TypeError, ValueError):
        return None


def _solve_chain(exprs: list[str], ops: list[str]):
    """The real solution set of a chain of relations in one variable, or None: exact, by sign
    analysis (``inequalities.solve_chain``), for relations that reduce to degree <= 2."""
    sympy = load_sympy()[0]
    if sum(len(e) for e in exprs) > 160:
        return None
    try:
        parts = [to_sympy(e.strip()) for e in exprs]
    except Refused:
        return None
    if any(p is None for p in parts):
        return None
    free = set().union(*(p.free_symbols for p in parts))
    if len(free) != 1:
        return None
    try:
        for _ in ops:
            WORK.solve()
        return solve_chain(parts, ops, free.pop(), sympy)
    except (Refused, TypeError, ValueError, ZeroDivisionError):  # budget spent; malformed trees
        return None
