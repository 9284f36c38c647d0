"""The structure of a normalised answer string (``parse``): tuples and intervals, unordered lists,
matrices, labelled values and equations, inequalities, unions, intersections and atoms."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .limits import LIMITS
from .matrices import matrix_cells, matrix_expr_cells
from .normalize import key

VAR = re.compile(r"^(?:[a-zA-Z]|\\(?:alpha|beta|gamma|theta|phi|lambda|mu|omega|rho|sigma|tau))(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-z]\))?$")
# Labels of a value that are not a single variable: (a,b), |PQ|, XY, S_1:S_2, m+n, \angle ABC.
# Letters, commands, subscripts, brackets, bars, ":", "+", and no digit outside a subscript.
_LABEL = re.compile(r"^(?:[A-Za-z]|\\[a-zA-Z]+(?![a-zA-Z]) ?|_\{?[A-Za-z0-9]{1,4}\}?|\^\{?-1\}?|[()|,:+\[\]{}' ])+$")
_LABEL_TUPLE = re.compile(r"^\((?:[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?, ?)+[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?\)$")
# f(3), g(-2), P(0.5): the value of a function at a number.
_FUNC_VALUE = re.compile(r"^[a-zA-Z](?:\^\{?-1\}?)?\(-?\d{1,6}(?:\.\d{1,6})?\)$")


@dataclass
class Node:
    kind: str                 # atom | seq | set | matrix | eq | ineq | union
    text: str = ""            # atom: the string; eq: lhs; ineq: the whole chain
    items: tuple = ()         # seq/set/union: child nodes; matrix: rows of nodes; eq: (rhs,)
    brackets: str = ""        # seq: e.g. "()" "[)"; set: "pm" when it came from a \pm


def _tokens(s: str):
    """Yield (start, end, token): backslash commands (``\\frac``, ``\\{``) as one token, else one char."""
    i, n = 0, len(s)
    while i < n:
        if s[i] == "\\":
            j = i + 1
            if j < n and s[j].isalpha():
                while j < n and s[j].isalpha():
                    j += 1
            else:
                j = min(j + 1, n)
            yield i, j, s[i:j]
            i = j
        else:
            yield i, i + 1, s[i]
            i += 1


_OPENERS = ("(", "[", "{", "\\{", "\\langle")
_CLOSERS = (")", "]", "}", "\\}", "\\rangle")


def _split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split ``s`` at separator tokens that are outside (), [], {}, \\{ \\} and \\langle \\rangle."""
    parts, depth, start = [], 0, 0
    for i, j, tok in _tokens(s):
        if tok in _OPENERS:
            depth += 1
        elif tok in _CLOSERS:
            depth -= 1
        elif depth == 0 and tok in seps:
            parts.append(s[start:i])
            start = j
    parts.append(s[start:])
    return parts


def _matching_close(s: str) -> tuple[str, str] | None:
    """If ``s`` is one bracketed group ``(…)``/``[…)``/``\\{…\\}``/``\\langle…\\rangle``: (open, close)."""
    depth = 0
    first = None
    for i, j, tok in _tokens(s):
        if first is None:
            if tok not in ("(", "[", "\\{", "\\langle"):
                return None
            first = tok
        if tok in _OPENERS:
            depth += 1
        elif tok in _CLOSERS:
            depth -= 1
            if depth == 0:
                return (first, tok) if j == len(s) else None
    return None


def parse(s: str, depth: int = 0) -> Node:
    """Structure of a normalised answer string."""
    s = s.strip()
    if depth > 8 or not s:
        return Node("atom", s)
    if s.startswith("\\begin{") and ("matrix}" in s[:20] or "array}" in s[:20]):
        cells = matrix_cells(s)
        if cells is not None:
            return _matrix(cells)
    if "\\begin{" in s and ("matrix}" in s or "array}" in s):
        cells = matrix_expr_cells(s)
        if cells is not None:
            return _matrix(cells)
    both = _split_top(s, ("\\wedge",))
    if len(both) > 1:  # x > 1 \wedge x < 5 (from "and" between relations): all must hold
        return Node("inter", items=tuple(parse(u, depth + 1) for u in both))
    union = _split_top(s, ("\\cup",))
    if len(union) > 1:
        return Node("union", items=tuple(parse(u, depth + 1) for u in union))
    parts = _split_top(s, (",", ";"))
    if len(parts) > 1:
        if len(parts) > LIMITS.max_items:
            return Node("atom", s)
        return Node("set", items=_flat(parse(p, depth + 1) for p in parts))
    grp = _matching_close(s)
    if grp is not None:
        op, cl = grp
        inner = s[len(op): len(s) - len(cl)]
        inner_parts = _split_top(inner, (",",))
        if len(inner_parts) == 1 and op != "\\{":
            inner_parts = _split_top(inner, (";",))  # (0;-2;6): a tuple written with semicolons
        if op == "\\{":
            return Node("set", items=_flat(parse(p, depth + 1) for p in inner_parts if p.strip()))
        if len(inner_parts) > 1:
            if op == "\\langle":
                op, cl = "(", ")"
            return Node("seq", items=tuple(parse(p, depth + 1) for p in inner_parts), brackets=op + cl)
    # Relations.
    rel = _split_top(s, ("\\leq", "\\geq", "<", ">", "\\ne"))
    if len(rel) > 1:
        return Node("ineq", s)
    eq = _split_top(s, ("=",))
    if len(eq) == 2 and eq[0].strip() and eq[1].strip():
        return Node("eq", eq[0].strip(), items=(parse(eq[1], depth + 1),))
    if len(eq) > 2:  # x = 5+5+1 = 11: the label (first part, else the one before the value) and the value
        lhs = eq[0].strip() if is_label(eq[0].strip()) else eq[-2].strip()
        return Node("eq", lhs, items=(parse(eq[-1], depth + 1),))
    pm = _split_top(s, ("\\pm",))
    if len(pm) == 2 and pm[1].strip():
        a, b = pm
        return Node("set", items=(Node("atom", f"{a}+{b}".lstrip("+")), Node("atom", f"{a}-({b})" if a else f"-({b})")),
                    brackets="pm")
    return Node("atom", s)


def _matrix(cells: tuple[tuple[str, ...], ...]) -> Node:
    return Node("matrix", items=tuple(tuple(Node("atom", c) for c in row) for row in cells))


def _flat(nodes) -> tuple:
    """List items, with ``a \\pm b`` items expanded in place (``\\{1\\pm\\sqrt5, -2\\}`` has 3 elements)."""
    out = []
    for n in nodes:
        out.extend(n.items if n.kind == "set" and n.brackets == "pm" else (n,))
    return tuple(out)


def is_label(lhs: str) -> bool:
    """Whether ``lhs = value`` names the value rather than states an equation.

    A single variable (``x = 3``), a function value (``f(3) = 7``), a tuple of variables
    (``(a,b) = (5,1)``), an absolute value or length (``|PQ| = 7``), and letter-only names that
    are not a polynomial in x, y, z (``XY``, ``m+n``, ``S_1:S_2``); ``x+y = 1`` and ``2x = 5`` are
    equations.
    """
    if len(lhs) > 80:
        return False
    k = key(lhs)
    if VAR.match(k) or _LABEL_TUPLE.match(k) or _FUNC_VALUE.match(k):
        return True
    if not _LABEL.match(lhs) or "=" in lhs:
        return False
    if k.startswith("|") and k.endswith("|"):
        return True
    letters = {c for c in re.sub(r"\\[a-zA-Z]+|_\{?[A-Za-z0-9]+\}?", "", lhs) if c.isascii() and c.isalpha()}
    return bool(letters) and not letters <= set("xyz")
