"""In-process answer equivalence (the rules of docs/grading.md).

``compare(gold, pred)`` takes two *extracted* answers and returns ``(equal, status)``. It is meant to
run inside a killable worker (``aci_jax.grading.pool``): it guards sympy against inputs that would
take unbounded time (power towers, huge factorials, very long strings), but the process kill is
the last line of defence.

Pipeline: normalise both strings (``normalize.py``) -> same string? -> parse each into a small
structure (``parse.py``: tuple/interval, unordered list, matrix or evaluated matrix expression
(``matrices.py``), labelled value or equation, inequality, union, intersection, atom) -> compare
structures (here; real sets in ``intervals.py``); atoms compare (``atoms.py``) as choice letters,
text, clock times, exact numbers (decimals to their written precision, ``numeric.py``), and finally
sympy expressions (``symbolic.py``: numeric evaluation at 40 digits, random probes for free
symbols). A comparison has a work budget (``limits.WORK``: parses cached, counted, bounded) on top
of the per-expression guards (``limits.LIMITS``).
"""

from __future__ import annotations

import collections
import re

from .atoms import atom_equal
from .intervals import as_set, sets_equal
from .limits import DEFAULT_REL_TOL, LIMITS, WORK, Limits
from .normalize import brace_stats, key, normalize
from .numeric import number
from .parse import Node, is_label, parse
from .symbolic import load_sympy, relation_equal

__all__ = ["compare", "DEFAULT_REL_TOL", "Limits"]

# y, f(x), g^{-1}(x): the value of a function of x (y = 4x-1 is the same answer as g(x) = 4x-1).
_FUNC_LABEL = re.compile(r"^(?:y|[a-zA-Z](?:\^\{?-1\}?)?\(([a-z])\))$")


def _nodes_equal(g: Node, p: Node, rel_tol: float) -> bool:
    # Equation "x = 3" against a value: compare the value; a lone variable on the left is a label.
    if g.kind == "eq" and p.kind != "eq" and is_label(g.text):
        return _nodes_equal(g.items[0], p, rel_tol)
    if p.kind == "eq" and g.kind != "eq" and is_label(p.text):
        return _nodes_equal(g, p.items[0], rel_tol)
    if g.kind == "eq" and p.kind == "eq":
        if key(g.text) == key(p.text) and _nodes_equal(g.items[0], p.items[0], rel_tol):
            return True
        fg, fp = _FUNC_LABEL.match(key(g.text)), _FUNC_LABEL.match(key(p.text))
        if fg and fp and (fg.group(1) or "x") == (fp.group(1) or "x"):
            return _nodes_equal(g.items[0], p.items[0], rel_tol)  # y = 4x-1 vs g(x) = 4x-1
        if g.items[0].kind == "atom" and p.items[0].kind == "atom":
            return relation_equal(g.text, g.items[0].text, p.text, p.items[0].text, rel_tol)
        return False
    # Intervals / unions / inequalities as real sets.
    if {"union", "ineq", "inter"} & {g.kind, p.kind} or (
            g.kind == "set" and any(n.kind == "ineq" for n in g.items)) or (
            p.kind == "set" and any(n.kind == "ineq" for n in p.items)):
        sg, sp_ = as_set(g), as_set(p)
        if sg is None or sp_ is None:
            return False
        try:
            return sets_equal(sg, sp_, load_sympy()[0])
        except Exception:  # noqa: BLE001 - sympy's set algebra on odd endpoints
            return False
    if g.kind != p.kind and "atom" in (g.kind, p.kind) and "seq" in (g.kind, p.kind):
        sg, sp_ = as_set(g), as_set(p)  # (-\infty, \infty) vs \mathbb{R}
        if sg is not None and sp_ is not None:
            return bool(sg == sp_)
    if g.kind == "set" and p.kind == "seq" or p.kind == "set" and g.kind == "seq":
        named = _named_tuple(g if g.kind == "set" else p)  # x=2, y=3 is the pair (2,3)
        if named is not None:
            return _nodes_equal(named, p, rel_tol) if g.kind == "set" else _nodes_equal(g, named, rel_tol)
    if g.kind == "set" and len(g.items) == 1:
        return _nodes_equal(g.items[0], p, rel_tol)
    if p.kind == "set" and len(p.items) == 1:
        return _nodes_equal(g, p.items[0], rel_tol)
    if g.kind == "set" and p.kind == "set":
        return _multiset_equal(list(g.items), list(p.items), rel_tol)
    if g.kind == "seq" and p.kind == "seq":
        return (g.brackets == p.brackets and len(g.items) == len(p.items)
                and all(_nodes_equal(a, b, rel_tol) for a, b in zip(g.items, p.items)))
    if g.kind == "matrix" or p.kind == "matrix":
        return _matrix_equal(g, p, rel_tol)
    if g.kind == "atom" and p.kind == "atom":
        return atom_equal(g.text, p.text, rel_tol)
    return False


def _named_tuple(node: Node) -> Node | None:
    """``x=2, y=3`` (or ``y=3, x=2``) as the tuple ``(2,3)``: equations whose labels are distinct
    single letters, ordered alphabetically (x, y, z; a, b, c; m, n; p, q)."""
    if len(node.items) < 2 or any(n.kind != "eq" for n in node.items):
        return None
    labels = [key(n.text) for n in node.items]
    if len(set(labels)) != len(labels) or not all(re.fullmatch(r"[a-zA-Z]", x) for x in labels):
        return None
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    return Node("seq", items=tuple(node.items[i].items[0] for i in order), brackets="()")


def _sig(node: Node) -> str:
    """A string that is equal for nodes written the same way (spaces aside)."""
    if node.kind == "atom":
        return "a:" + key(node.text)
    if node.kind == "matrix":
        return "m:" + "\\".join("&".join(_sig(c) for c in row) for row in node.items)
    inner = ",".join(_sig(n) for n in node.items)
    return f"{node.kind}:{node.brackets}:{key(node.text)}({inner})"


_MAX_PAIRS = 4096  # pairwise comparisons of list items left after identical items are matched


def _multiset_equal(a: list, b: list, rel_tol: float) -> bool:
    if len(a) != len(b):
        return False
    # Items written the same way match first, in linear time; only the rest is compared pairwise,
    # and a rest too large to compare pairwise within the time limit is not equal.
    counts = collections.Counter(_sig(y) for y in b)
    rest_a = []
    for x in a:
        k = _sig(x)
        if counts[k] > 0:
            counts[k] -= 1
        else:
            rest_a.append(x)
    if not rest_a:
        return True
    remaining = []
    for y in b:  # the items of b that no identical item of a took
        k = _sig(y)
        if counts[k] > 0:
            counts[k] -= 1
            remaining.append(y)
    if len(rest_a) * len(remaining) > _MAX_PAIRS:
        return False
    for x in rest_a:
        for j, y in enumerate(remaining):
            if _nodes_equal(x, y, rel_tol):
                del remaining[j]
                break
        else:
            return False
    return True


def _matrix_equal(g: Node, p: Node, rel_tol: float) -> bool:
    def cells(n: Node):
        if n.kind == "matrix":
            rows = n.items
            if len({len(r) for r in rows}) != 1:
                return None, None
            return (len(rows), len(rows[0])), [c for r in rows for c in r]
        if n.kind == "seq" and n.brackets == "()":
            return ("vector", len(n.items)), list(n.items)
        return None, None

    sg, cg = cells(g)
    sp_, cp = cells(p)
    if sg is None or sp_ is None:
        return False
    if sg != sp_:
        # A column or row vector equals the tuple of its entries.
        def flat(shape):
            return shape[1] if shape[0] == "vector" else (shape[0] * shape[1] if 1 in shape else None)
        if flat(sg) is None or flat(sg) != flat(sp_):
            return False
    return all(_nodes_equal(a, b, rel_tol) for a, b in zip(cg, cp))


def compare(gold: str, pred: str | None, rel_tol: float = DEFAULT_REL_TOL) -> tuple[bool, str]:
    """(equal, status) for an extracted gold and prediction.

    status: ``ok`` — a verdict was reached; ``parse_error`` — the prediction is missing, empty or
    malformed (unbalanced braces), verdict False.
    """
    if pred is None or not pred.strip():
        return False, "parse_error"
    if not brace_stats(pred)[1]:
        return False, "parse_error"
    if len(gold) > LIMITS.max_len or len(pred) > LIMITS.max_len:
        return key(gold.strip()) == key(pred.strip()), "ok"
    g, p = normalize(gold), normalize(pred)
    if key(g) == key(p):
        return True, "ok"
    if not p:
        return False, "parse_error"
    WORK.reset()
    if _nodes_equal(parse(g), parse(p), rel_tol):
        return True, "ok"
    # 35% is also the number 0.35: a percent on one side only may be read either way.
    pg, pp = bool(_PERCENT.search(gold)), bool(_PERCENT.search(pred))
    if pg != pp:
        scaled = _percent_value(g if pg else p)
        if scaled is not None:
            return atom_equal(scaled, p, rel_tol) if pg else atom_equal(g, scaled, rel_tol), "ok"
    return False, "ok"


_PERCENT = re.compile(r"(?:\\?%|\b(?:percent|percentage|pct|per cent))[\s}$.]*$")


def _percent_value(s: str) -> str | None:
    """``s`` (a plain number) divided by 100, written so that a decimal keeps its precision."""
    n = number(s)
    if n is None:
        return None
    value, ulp = n
    if ulp is None:
        v = value / 100
        return f"\\frac{{{v.numerator}}}{{{v.denominator}}}"
    from decimal import Decimal

    return format(Decimal(s.replace(" ", "")).scaleb(-2), "f")
