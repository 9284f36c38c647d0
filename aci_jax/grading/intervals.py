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
from .symbolic import evalf, load_sympy, to_sympy

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
    """``sympy.Union(*sets)``, with the intervals among them merged first by one sort and sweep:
    sympy's own simplification compares every pair (1,000 intervals took over a second)."""
    intervals = [s for s in sets if isinstance(s, sympy.Interval)]
    if len(intervals) < 3:
        return sympy.Union(*sets)
    try:
        intervals.sort(key=functools.cmp_to_key(_cmp_left))
        merged = [intervals[0]]
        for iv in intervals[1:]:
            last = merged[-1]
            # Overlapping, or touching with the shared endpoint in at least one of the two.
            if bool(iv.start < last.end) or (bool(iv.start == last.end) and not (iv.left_open and last.right_open)):
                if bool(iv.end > last.end) or (bool(iv.end == last.end) and not iv.right_open):
                    merged[-1] = sympy.Interval(last.start, iv.end, last.left_open, iv.right_open)
            else:
                merged.append(iv)
    except TypeError:   # an endpoint sympy cannot order: leave it all to sympy
        return sympy.Union(*sets)
    return sympy.Union(*merged, *(s for s in sets if not isinstance(s, sympy.Interval)))


def _cmp_left(a, b) -> int:
    """Order intervals by left endpoint, a closed one before an open one at the same point."""
    if bool(a.start < b.start):
        return -1
    if bool(b.start < a.start):
        return 1
    return int(a.left_open) - int(b.left_open)


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
