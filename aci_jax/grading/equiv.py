"""In-process answer equivalence (the rules of docs/grading.md).

``compare(gold, pred)`` takes two *extracted* answers and returns ``(equal, status)``. It is meant to
run inside a killable worker (``aci_jax.grading.pool``): it guards sympy against inputs that would
take unbounded time (power towers, huge factorials, very long strings), but the process kill is
the last line of defence.

Pipeline: normalise both strings (``normalize.py``) -> same string? -> parse each into a small
structure (tuple/interval, unordered list, matrix or evaluated matrix expression, labelled value or
equation, inequality, union, intersection, atom) -> compare structures; atoms compare as choice
letters, text, clock times, exact numbers (decimals to their written precision), and finally sympy
expressions (numeric evaluation at 40 digits, random probes for free symbols). A comparison has a
work budget (``_Work``: parses cached, counted, bounded) on top of the per-expression guards.
"""

from __future__ import annotations

import collections
import math
import random
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from .normalize import brace_stats, normalize

__all__ = ["compare", "DEFAULT_REL_TOL", "Limits"]

DEFAULT_REL_TOL = 1e-4


@dataclass(frozen=True)
class Limits:
    """Static guards applied before anything reaches sympy (sizes in characters/digits)."""

    max_len: int = 100_000        # longer answers: string comparison only
    max_sympy_len: int = 400      # longest atom handed to the LaTeX parser
    max_brace_depth: int = 24     # deeper nesting is not parsed
    max_digits: int = 1000        # digit runs longer than this are compared as strings
    max_pow_log10: float = 1e5    # refuse to evaluate anything whose magnitude may exceed 10^(1e5)
    max_items: int = 5000         # list/matrix entries
    max_parses: int = 150         # LaTeX parses per comparison (each distinct atom once: cached)
    max_parse_chars: int = 8_000  # characters handed to the LaTeX parser per comparison
    max_solves: int = 12          # relations handed to the solver per comparison


LIMITS = Limits()

# ----------------------------------------------------------------------------- structures
_VAR = re.compile(r"^(?:[a-zA-Z]|\\(?:alpha|beta|gamma|theta|phi|lambda|mu|omega|rho|sigma|tau))(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-z]\))?$")
# Labels of a value that are not a single variable: (a,b), |PQ|, XY, S_1:S_2, m+n, \angle ABC.
# Letters, commands, subscripts, brackets, bars, ":", "+", and no digit outside a subscript.
_LABEL = re.compile(r"^(?:[A-Za-z]|\\[a-zA-Z]+(?![a-zA-Z]) ?|_\{?[A-Za-z0-9]{1,4}\}?|\^\{?-1\}?|[()|,:+\[\]{}' ])+$")
_LABEL_TUPLE = re.compile(r"^\((?:[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?, ?)+[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?\)$")
# f(3), g(-2), P(0.5): the value of a function at a number.
_FUNC_VALUE = re.compile(r"^[a-zA-Z](?:\^\{?-1\}?)?\(-?\d{1,6}(?:\.\d{1,6})?\)$")
# y, f(x), g^{-1}(x): the value of a function of x (y = 4x-1 is the same answer as g(x) = 4x-1).
_FUNC_LABEL = re.compile(r"^(?:y|[a-zA-Z](?:\^\{?-1\}?)?\(([a-z])\))$")
_CHOICE_PAREN = re.compile(r"^\(\s*([A-E])\s*\)$")
# Text answers: letters, spaces, hyphens, apostrophes, with at least one word of 2+ letters.
_WORD = re.compile(r"^(?=.*[A-Za-z]{2})[A-Za-z][A-Za-z '\-]*[A-Za-z]$")


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


def _parse(s: str, depth: int = 0) -> Node:
    """Structure of a normalised answer string."""
    s = s.strip()
    if depth > 8 or not s:
        return Node("atom", s)
    if s.startswith("\\begin{") and ("matrix}" in s[:20] or "array}" in s[:20]):
        m = _parse_matrix(s, depth)
        if m is not None:
            return m
    if "\\begin{" in s and ("matrix}" in s or "array}" in s):
        m = _matrix_expr(s)
        if m is not None:
            return m
    both = _split_top(s, ("\\wedge",))
    if len(both) > 1:  # x > 1 \wedge x < 5 (from "and" between relations): all must hold
        return Node("inter", items=tuple(_parse(u, depth + 1) for u in both))
    union = _split_top(s, ("\\cup",))
    if len(union) > 1:
        return Node("union", items=tuple(_parse(u, depth + 1) for u in union))
    parts = _split_top(s, (",", ";"))
    if len(parts) > 1:
        if len(parts) > LIMITS.max_items:
            return Node("atom", s)
        return Node("set", items=_flat(_parse(p, depth + 1) for p in parts))
    grp = _matching_close(s)
    if grp is not None:
        op, cl = grp
        inner = s[len(op): len(s) - len(cl)]
        inner_parts = _split_top(inner, (",",))
        if len(inner_parts) == 1 and op != "\\{":
            inner_parts = _split_top(inner, (";",))  # (0;-2;6): a tuple written with semicolons
        if op == "\\{":
            return Node("set", items=_flat(_parse(p, depth + 1) for p in inner_parts if p.strip()))
        if len(inner_parts) > 1:
            if op == "\\langle":
                op, cl = "(", ")"
            return Node("seq", items=tuple(_parse(p, depth + 1) for p in inner_parts), brackets=op + cl)
    # Relations.
    rel = _split_top(s, ("\\leq", "\\geq", "<", ">", "\\ne"))
    if len(rel) > 1:
        return Node("ineq", s)
    eq = _split_top(s, ("=",))
    if len(eq) == 2 and eq[0].strip() and eq[1].strip():
        return Node("eq", eq[0].strip(), items=(_parse(eq[1], depth + 1),))
    if len(eq) > 2:  # x = 5+5+1 = 11: the label (first part, else the one before the value) and the value
        lhs = eq[0].strip() if _is_label(eq[0].strip()) else eq[-2].strip()
        return Node("eq", lhs, items=(_parse(eq[-1], depth + 1),))
    pm = _split_top(s, ("\\pm",))
    if len(pm) == 2 and pm[1].strip():
        a, b = pm
        return Node("set", items=(Node("atom", f"{a}+{b}".lstrip("+")), Node("atom", f"{a}-({b})" if a else f"-({b})")),
                    brackets="pm")
    return Node("atom", s)


def _matrix_expr(s: str) -> Node | None:
    """A sum, product, scalar multiple or small power of matrices, evaluated to its matrix value."""
    if len(s) > 2 * LIMITS.max_sympy_len or s.count("\\begin{") > 6:
        return None
    if s.count("&") + s.count("\\\\") > 200 or not brace_stats(s)[1] or brace_stats(s)[0] > LIMITS.max_brace_depth:
        return None
    if re.search(r"\d{%d,}" % 30, s) or s.count("^") > 4 or _DIGIT_SPACE_DIGIT.search(s):
        return None
    try:
        _Work.charge(len(s))
    except _Refused:
        return None
    sympy = _sp()[0]
    e = _parse_or_none(s)
    if e is None or not _has_matrix(e, sympy):
        return None
    # Every number is computed by the sums and products below, so all of them (matrix entries and
    # scalar factors alike) must be small: 9^{9^{9}} anywhere is refused, not multiplied.
    scalars = [n for n in sympy.preorder_traversal(e) if not isinstance(n, (sympy.MatrixBase, sympy.MatrixExpr))]
    entries = [x for n in sympy.preorder_traversal(e) if isinstance(n, sympy.MatrixBase) for x in n]
    try:
        for x in scalars + entries:
            _guard(x, sympy)
            for node in sympy.preorder_traversal(x):
                grows = node.is_Pow or node.func.__name__ in _GROWTH
                if node.is_number and grows and _log10_bound(node, sympy) > 1000:
                    return None
    except _Refused:
        return None
    for node in sympy.preorder_traversal(e):  # (matrix)^n: n a small non-negative integer
        if (isinstance(node, sympy.MatPow) or (isinstance(node, sympy.Pow) and isinstance(
                node.args[0], (sympy.MatrixBase, sympy.MatrixExpr)))) and not (
                node.args[1].is_Integer and 0 <= int(node.args[1]) <= 8):
            return None
        if isinstance(node, sympy.MatrixBase) and node.rows * node.cols > 100:
            return None
    try:
        v = _mat_eval(e, sympy)
    except Exception:  # shape mismatch (ShapeError) and the like: not a matrix value
        return None
    if not isinstance(v, sympy.MatrixBase):
        return None
    try:
        grid = tuple(tuple(Node("atom", sympy.latex(v[i, j]))
                           for j in range(v.cols)) for i in range(v.rows))
    except Exception:  # noqa: BLE001 - an entry sympy cannot print is not a value we can compare
        return None
    return Node("matrix", items=grid)


def _mat_eval(e, sympy):
    """Value of a parsed matrix expression: sums, products with scalars or matrices, integer powers."""
    if isinstance(e, sympy.MatrixBase):
        return sympy.Matrix(e)
    if isinstance(e, (sympy.MatAdd, sympy.Add)):
        args = [_mat_eval(a, sympy) for a in e.args]
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out
    if isinstance(e, (sympy.MatMul, sympy.Mul)):
        out = sympy.Integer(1)
        for a in e.args:
            out = out * _mat_eval(a, sympy)
        return out
    if isinstance(e, (sympy.MatPow, sympy.Pow)):
        base, n = _mat_eval(e.args[0], sympy), e.args[1]
        if isinstance(base, sympy.MatrixBase):
            return base ** int(n)  # n checked: a small non-negative integer
        return sympy.Pow(base, n)
    if _has_matrix(e, sympy):
        raise ValueError("unsupported matrix expression")
    return e


def _has_matrix(e, sympy) -> bool:
    kinds = (sympy.MatrixBase, sympy.MatrixExpr)
    return isinstance(e, kinds) or any(isinstance(a, kinds) for a in sympy.preorder_traversal(e))


def _flat(nodes) -> tuple:
    """List items, with ``a \\pm b`` items expanded in place (``\\{1\\pm\\sqrt5, -2\\}`` has 3 elements)."""
    out = []
    for n in nodes:
        out.extend(n.items if n.kind == "set" and n.brackets == "pm" else (n,))
    return tuple(out)


def _is_label(lhs: str) -> bool:
    """Whether ``lhs = value`` names the value rather than states an equation.

    A single variable (``x = 3``), a function value (``f(3) = 7``), a tuple of variables
    (``(a,b) = (5,1)``), an absolute value or length (``|PQ| = 7``), and letter-only names that
    are not a polynomial in x, y, z (``XY``, ``m+n``, ``S_1:S_2``); ``x+y = 1`` and ``2x = 5`` are
    equations.
    """
    if len(lhs) > 80:
        return False
    k = _key(lhs)
    if _VAR.match(k) or _LABEL_TUPLE.match(k) or _FUNC_VALUE.match(k):
        return True
    if not _LABEL.match(lhs) or "=" in lhs:
        return False
    if k.startswith("|") and k.endswith("|"):
        return True
    letters = {c for c in re.sub(r"\\[a-zA-Z]+|_\{?[A-Za-z0-9]+\}?", "", lhs) if c.isascii() and c.isalpha()}
    return bool(letters) and not letters <= set("xyz")


def _parse_matrix(s: str, depth: int) -> Node | None:
    m = re.match(r"^\\begin\{([a-zA-Z]*matrix|array)\}", s)
    if not m:
        return None
    env = m.group(1)
    if env in ("vmatrix", "Vmatrix"):
        return None  # a determinant, not a matrix
    end = f"\\end{{{env}}}"
    if not s.endswith(end):
        return None
    body = s[m.end(): len(s) - len(end)]
    if "\\begin{" in body or "\\end{" in body:
        return None  # several matrices: an expression (see _matrix_expr)
    if env == "array" and body.startswith("{"):
        close = body.find("}")
        body = body[close + 1:]
    rows = [r for r in body.split("\\\\")]
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows or sum(r.count("&") + 1 for r in rows) > LIMITS.max_items:
        return None
    grid = tuple(tuple(Node("atom", c.strip()) for c in r.split("&")) for r in rows)
    return Node("matrix", items=grid)


# ----------------------------------------------------------------------------- numbers
_INT = re.compile(r"^[+-]?\d+$")
_DEC = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_SCI = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\\(?:times|cdot) ?10\^)\{?([+-]?\d{1,4})\}?$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
# Two numbers side by side ("2 1/4", "12 345"); a subscript or exponent before the space is fine (\log_2 8).
_DIGIT_SPACE_DIGIT = re.compile(r"(?:^|[^\d_^])\d+ \d")
_DEC_LIT = re.compile(r"(?<![\d.])\d{0,30}\.\d{1,30}")
_REPEATING = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d{1,30})\}$")
_MIXEDN = re.compile(r"^([+-]?)\((\d+)\+\\frac\{(\d+)\}\{(\d+)\}\)$")


def _places(digits: str) -> int:
    """Digits after the decimal point of a literal such as ``12.50`` (0 when there is none)."""
    return len(digits.split(".", 1)[1]) if "." in digits else 0


def _number(s: str) -> tuple[Fraction, Fraction | None] | None:
    """(value, ulp) for plain numeric literals; None otherwise.

    ``ulp`` is None for exact literals (integers, fractions) and the unit in the last written place
    for decimals (``3.14`` -> 1/100, ``1.5e3`` -> 100): a decimal stands for every value that it
    rounds or truncates to, and nothing further away.
    """
    if _DIGIT_SPACE_DIGIT.search(s):
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


def _decimal_rel(s: str) -> float:
    """The relative precision of the least precise decimal literal written in ``s`` (inf if none):
    ``3.14`` -> 0.01 / 3.14. A decimal is compared no more loosely than it was written."""
    best = math.inf
    for m in _DEC_LIT.finditer(s):
        v = float(m.group(0))
        if v:
            best = min(best, 10.0 ** -_places(m.group(0)) / v)
    return best


def _close(a, b, rel_tol: float) -> bool:
    """|a - b| <= rel_tol * max(|a|, |b|) for Python or mpmath numbers."""
    return bool(abs(a - b) <= rel_tol * max(abs(a), abs(b)))


# ----------------------------------------------------------------------------- sympy
_sympy = None


def _sp():
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


def _parse_or_none(s: str):
    """The LaTeX parser's sympy object for `s`, or None when it cannot read it (it raises bare
    Exception on malformed LaTeX, and RecursionError, also an Exception, on deep nesting)."""
    try:
        return _sp()[1](s)
    except Exception:
        return None


class _Refused(Exception):
    """The expression is too large to evaluate safely."""


_GROWTH = ("exp", "sinh", "cosh", "factorial", "factorial2", "gamma", "binomial", "subfactorial")


def _log10_bound(e, sympy) -> float:
    """Crude upper bound on |log10|e|| for a numeric sympy tree, i.e. how many orders of magnitude
    ``e`` may be away from 1 in either direction (inf when astronomically large or small)."""
    if e.is_Integer:
        n = abs(int(e))
        return math.log10(n) if n > 1 else 0.0
    if e.is_Rational:
        return max(_log10_bound(sympy.Integer(e.p), sympy), _log10_bound(sympy.Integer(e.q), sympy))
    if e.is_Float:
        return abs(math.log10(abs(float(e)))) if e != 0 and math.isfinite(float(e)) else 0.0
    if e.is_Number or e.is_NumberSymbol or e is sympy.I:
        return 1.0
    name = e.func.__name__
    if e.is_Pow:
        b, x = e.args
        lb, lx = _log10_bound(b, sympy), _log10_bound(x, sympy)
        return math.inf if lx > 7 else max(lb, 1.0) * 10 ** lx
    if name in _GROWTH:
        lx = max((_log10_bound(a, sympy) for a in e.args), default=1.0)
        return math.inf if lx > 7 else (10 ** lx) * max(lx, 1.0)
    if e.is_Mul:
        return sum(_log10_bound(a, sympy) for a in e.args)
    return max((_log10_bound(a, sympy) for a in e.args), default=1.0) + 1


def _guard(expr, sympy) -> None:
    """Raise _Refused for trees that would take unbounded time or memory to evaluate."""
    count = 0
    for node in sympy.preorder_traversal(expr):
        count += 1
        if count > 2000:
            raise _Refused("too many nodes")
        if (node.is_Pow or node.func.__name__ in _GROWTH) and node.is_number:
            if _log10_bound(node, sympy) > LIMITS.max_pow_log10:
                raise _Refused("value too large to evaluate")
        # x^(huge): probing at |x| > 1 would be astronomically large as well.
        if node.is_Pow and not node.is_number and node.args[1].is_number:
            if _log10_bound(node.args[1], sympy) > 6:
                raise _Refused("exponent too large")


class _WorkState(threading.local):
    """Per-comparison cache of parsed atoms and the work budget that bounds a whole comparison:
    a list of 5,000 items each within the size limits must not add up to minutes. Reset by
    ``compare``; past the budget, parses raise _Refused (not equal unless string-identical).
    Thread-local, so in-process comparisons in several threads do not share a budget."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.parsed, self.parses, self.chars, self.solves = {}, 0, 0, 0

    def charge(self, n_chars: int) -> None:
        self.parses += 1
        self.chars += n_chars
        if self.parses > LIMITS.max_parses or self.chars > LIMITS.max_parse_chars:
            raise _Refused("work budget of one comparison spent")

    def solve(self) -> None:
        self.solves += 1
        if self.solves > LIMITS.max_solves:
            raise _Refused("solver budget of one comparison spent")


_Work = _WorkState()


def _to_sympy(s: str):
    """Parse an atom with the LaTeX parser under the static guards; None when not parseable.
    Each distinct string is parsed once per comparison (``_Work``)."""
    hit = _Work.parsed.get(s, _MISSING)
    if hit is not _MISSING:
        if isinstance(hit, _Refused):
            raise hit
        return hit
    try:
        e = _to_sympy_uncached(s)
    except _Refused as refused:
        _Work.parsed[s] = refused
        raise
    _Work.parsed[s] = e
    return e


_MISSING = object()


def _to_sympy_uncached(s: str):
    if len(s) > LIMITS.max_sympy_len or re.search(r"\d{%d,}" % (LIMITS.max_digits + 1), s):
        return None
    depth, ok = brace_stats(s)
    if depth > LIMITS.max_brace_depth or not ok:
        return None
    if s.count("^") > 12 or _DIGIT_SPACE_DIGIT.search(s):
        return None  # "2 1/4" would be read as 21/4
    _Work.charge(len(s))
    sympy = _sp()[0]
    e = _parse_or_none(s)
    if isinstance(e, list) or not isinstance(e, sympy.Expr):
        return None
    # MATH's i is the imaginary unit.
    syms = {x for x in e.free_symbols if x.name == "i"}
    if syms:
        with sympy.evaluate(False):
            e = e.xreplace({x: sympy.I for x in syms})
    _guard(e, sympy)
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


def _evalf(e, sympy, prec: int = 40):
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


def _undefined(e, sympy) -> bool:
    """A division by zero or an indeterminate form anywhere in ``e``."""
    if e.has(sympy.zoo, sympy.nan):
        return True
    return any(p.is_Pow and p.args[0] == 0 and p.args[1].is_number and bool(p.args[1].is_negative)
               for p in sympy.preorder_traversal(e))


def _has_float(e, sympy) -> bool:
    return any(isinstance(a, sympy.Float) for a in sympy.preorder_traversal(e))


def _expr_equal(a: str, b: str, rel_tol: float) -> bool:
    """Symbolic/numeric equality of two atoms through sympy (False when either side cannot be parsed)."""
    try:
        ea, eb = _to_sympy(a), _to_sympy(b)
    except _Refused:
        return False
    if ea is None or eb is None:
        return False
    sympy = _sp()[0]
    if _undefined(ea, sympy) or _undefined(eb, sympy):
        return False  # 3/0 is not 5/0: an undefined value equals nothing (but the same string)
    if ea == eb:
        return True
    approx = _has_float(ea, sympy) or _has_float(eb, sympy)
    # exact sides: equal at 40 digits means equal; decimals: no looser than they were written
    tol = min(rel_tol, _decimal_rel(a), _decimal_rel(b)) if approx else 1e-25
    free = ea.free_symbols | eb.free_symbols
    try:
        if not free:
            if any(x.has(sympy.oo, -sympy.oo, sympy.zoo) for x in (ea, eb)):
                return ea == eb
            va, vb = _evalf(ea, sympy), _evalf(eb, sympy)
            if va is None or vb is None:
                return False
            if not approx:  # exact values: sympy evaluates the difference itself (adaptive, 50 digits)
                hi = _evalf(sympy.Add(ea, sympy.Mul(-1, eb, evaluate=False), evaluate=False), sympy, 50)
                if hi is None:
                    return False
                scale = max(abs(va), abs(vb))
                return bool(abs(hi) <= 1e-25 * scale) if scale else bool(abs(hi) == 0)
            return _close(va, vb, tol)
        return _probe_equal(ea, eb, free, tol, sympy)
    except (_Refused, ArithmeticError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def _probes(free, n: int = 5):
    rng = random.Random(1234)
    names = sorted(free, key=lambda x: x.name)
    return [{x: rng.choice([1, -1]) * (0.37 + 2.3 * rng.random()) for x in names} for _ in range(n)]


def _value_at(e, point, sympy):
    with sympy.evaluate(False):
        v = e.xreplace({k: sympy.Float(val, 30) for k, val in point.items()})
    return _evalf(v, sympy, 30)


def _probe_equal(ea, eb, free, tol, sympy) -> bool:
    """Identity test: equal values at 5 random real points (points where either side is undefined skipped)."""
    seen = 0
    for pt in _probes(free, 8):
        va, vb = _value_at(ea, pt, sympy), _value_at(eb, pt, sympy)
        if va is None or vb is None:
            continue
        seen += 1
        if not _close(va, vb, max(tol, 1e-9)):
            return False
        if seen >= 5:
            break
    return seen >= 3


def _relation_equal(la: str, ra: str, lb: str, rb: str, rel_tol: float) -> bool:
    """Equations lhs_a = rhs_a and lhs_b = rhs_b are the same when (la-ra) = c (lb-rb) for a constant c != 0."""
    try:
        parts = [_to_sympy(x) for x in (la, ra, lb, rb)]
    except _Refused:
        return False
    if any(p is None for p in parts):
        return False
    sympy = _sp()[0]
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
        elif not _close(r, ratio, 1e-9):
            return False
        seen += 1
    return seen >= 3


# ----------------------------------------------------------------------------- atoms
_SPACE_KEY = re.compile(r"(?<!\d) | (?!\d)")


def _key(s: str) -> str:
    """``s`` without spaces, except one between two digits: "3 4" is not "34"."""
    return _SPACE_KEY.sub("", s)


def _atom_equal(a: str, b: str, rel_tol: float) -> bool:
    if _key(a) == _key(b):
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
    ta, tb = _clock(a), _clock(b)
    if ta is not None or tb is not None:  # 11:00 is a time of day, not the ratio 11/0
        return ta is not None and ta == tb
    na, nb = _number(a), _number(b)
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
    return _expr_equal(a, b, rel_tol)


_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))? ?(?:([AaPp])\.? ?[Mm]\.?)?$")
_CLOCK_H = re.compile(r"^(\d{1,2}) ?([AaPp])\.? ?[Mm]\.?$")


def _clock(s: str) -> int | None:
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


# ----------------------------------------------------------------------------- intervals
def _as_set(node: Node):
    """A sympy set for interval-like nodes (intervals, unions, one-variable inequalities); None otherwise."""
    sympy = _sp()[0]
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
        return sympy.Union(*sets) if node.kind == "union" else sympy.Intersection(*sets)
    if node.kind == "ineq":
        return _ineq_set(node.text)
    if node.kind == "set" and node.items and all(n.kind == "ineq" for n in node.items):
        sets = _all_sets(node.items)  # "x < -1 or x > 2"
        if sets is None:
            return None
        return sympy.Union(*sets)
    if node.kind == "atom" and _key(node.text) in ("\\varnothing", "\\{\\}", "\\mathbb{R}", "(-\\infty,\\infty)"):
        return sympy.S.EmptySet if "varnothing" in node.text or node.text == "\\{\\}" else sympy.S.Reals
    return None


def _all_sets(nodes) -> list | None:
    """``_as_set`` of every node, or None as soon as one is not a set (without computing the rest)."""
    out = []
    for n in nodes:
        x = _as_set(n)
        if x is None:
            return None
        out.append(x)
    return out


def _endpoint(node: Node):
    if node.kind != "atom":
        return None
    sympy = _sp()[0]
    t = _key(node.text)
    if t in ("\\infty", "+\\infty"):
        return sympy.oo
    if t == "-\\infty":
        return -sympy.oo
    n = _number(t)
    if n is not None:
        return sympy.Rational(n[0].numerator, n[0].denominator)
    try:
        e = _to_sympy(t)
    except _Refused:
        return None
    if e is None or e.free_symbols:
        return None
    v = _evalf(e, sympy)
    if v is None or abs(v.imag) > 0:
        return None
    return e


_REL_SPLIT = re.compile(r"(\\leq|\\geq|<|>|\\ne(?![a-zA-Z]))")


def _ineq_set(s: str):
    """One-variable chain like ``-2 \\leq x < 5`` or ``x > 3`` as a sympy Interval; other
    one-variable chains (``-x < -2``, ``1 < |z| \\le 2``, ``x \\ne 3``) are solved over the reals."""
    sympy = _sp()[0]
    tokens = _REL_SPLIT.split(s)
    if len(tokens) not in (3, 5):
        return None
    exprs, ops = tokens[0::2], tokens[1::2]
    var_idx = [i for i, e in enumerate(exprs) if _VAR.match(e.strip())]
    if len(var_idx) != 1 or "\\ne" in ops:
        return _solve_chain(exprs, ops)
    vi = var_idx[0]
    lo, hi, lo_open, hi_open = -sympy.oo, sympy.oo, True, True
    for i, op in enumerate(ops):
        left, right = exprs[i], exprs[i + 1]
        strict = op in ("<", ">")
        less = op in ("<", "\\leq")
        if i + 1 == vi:   # bound on the left of the variable: left OP x
            bound = _endpoint(Node("atom", left.strip()))
            if bound is None:
                return None
            if less:
                lo, lo_open = bound, strict
            else:
                hi, hi_open = bound, strict
        elif i == vi:     # x OP right
            bound = _endpoint(Node("atom", right.strip()))
            if bound is None:
                return None
            if less:
                hi, hi_open = bound, strict
            else:
                lo, lo_open = bound, strict
        else:
            return None
    try:
        return sympy.Interval(lo, hi, left_open=lo_open, right_open=hi_open)
    except (TypeError, ValueError):
        return None


_REL_OPS = {"<": "StrictLessThan", ">": "StrictGreaterThan", "\\leq": "LessThan", "\\geq": "GreaterThan",
            "\\ne": "Unequality"}


def _solve_chain(exprs: list[str], ops: list[str]):
    """The real solution set of a chain of relations in one variable, or None.

    Only quotients of polynomials of degree <= 2 and absolute values of them are solved (quick and
    exact: cubics and quartics take the solver seconds); anything else is left unsolved.
    """
    sympy = _sp()[0]
    if sum(len(e) for e in exprs) > 160:
        return None
    try:
        parts = [_to_sympy(e.strip()) for e in exprs]
    except _Refused:
        return None
    if any(p is None for p in parts):
        return None
    free = set().union(*(p.free_symbols for p in parts))
    if len(free) != 1:
        return None
    x = free.pop()
    for p in parts:
        for node in sympy.preorder_traversal(p):
            if node.is_Function and not isinstance(node, sympy.Abs):
                return None
        for q in [p] + [a.args[0] for a in p.atoms(sympy.Abs)]:
            num, den = sympy.fraction(sympy.together(q.replace(sympy.Abs, lambda a: x)))
            if any(not t.is_polynomial(x) or sympy.degree(sympy.expand(t), x) > 2 for t in (num, den)):
                return None
    result = sympy.S.Reals
    try:
        _Work.solve()
        for i, op in enumerate(ops):
            rel = getattr(sympy, _REL_OPS[op])(parts[i], parts[i + 1], evaluate=False)
            sol = sympy.solveset(rel, x, domain=sympy.S.Reals)
            if not isinstance(sol, (sympy.Interval, sympy.Union, sympy.FiniteSet)) and sol not in (
                    sympy.S.Reals, sympy.S.EmptySet):
                return None
            result = sympy.Intersection(result, sol)
    except Exception:  # noqa: BLE001 - the solver's NotImplementedError and friends
        return None
    return result


# ----------------------------------------------------------------------------- structures
def _nodes_equal(g: Node, p: Node, rel_tol: float) -> bool:
    # Equation "x = 3" against a value: compare the value; a lone variable on the left is a label.
    if g.kind == "eq" and p.kind != "eq" and _is_label(g.text):
        return _nodes_equal(g.items[0], p, rel_tol)
    if p.kind == "eq" and g.kind != "eq" and _is_label(p.text):
        return _nodes_equal(g, p.items[0], rel_tol)
    if g.kind == "eq" and p.kind == "eq":
        if _key(g.text) == _key(p.text) and _nodes_equal(g.items[0], p.items[0], rel_tol):
            return True
        fg, fp = _FUNC_LABEL.match(_key(g.text)), _FUNC_LABEL.match(_key(p.text))
        if fg and fp and (fg.group(1) or "x") == (fp.group(1) or "x"):
            return _nodes_equal(g.items[0], p.items[0], rel_tol)  # y = 4x-1 vs g(x) = 4x-1
        if g.items[0].kind == "atom" and p.items[0].kind == "atom":
            return _relation_equal(g.text, g.items[0].text, p.text, p.items[0].text, rel_tol)
        return False
    # Intervals / unions / inequalities as real sets.
    if {"union", "ineq", "inter"} & {g.kind, p.kind} or (
            g.kind == "set" and any(n.kind == "ineq" for n in g.items)) or (
            p.kind == "set" and any(n.kind == "ineq" for n in p.items)):
        sg, sp_ = _as_set(g), _as_set(p)
        if sg is None or sp_ is None:
            return False
        try:
            return bool(sg == sp_) or bool((sg.symmetric_difference(sp_)).is_empty)
        except Exception:
            return False
    if g.kind != p.kind and "atom" in (g.kind, p.kind) and "seq" in (g.kind, p.kind):
        sg, sp_ = _as_set(g), _as_set(p)  # (-\infty, \infty) vs \mathbb{R}
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
        return _atom_equal(g.text, p.text, rel_tol)
    return False


def _named_tuple(node: Node) -> Node | None:
    """``x=2, y=3`` (or ``y=3, x=2``) as the tuple ``(2,3)``: equations whose labels are distinct
    single letters, ordered alphabetically (x, y, z; a, b, c; m, n; p, q)."""
    if len(node.items) < 2 or any(n.kind != "eq" for n in node.items):
        return None
    labels = [_key(n.text) for n in node.items]
    if len(set(labels)) != len(labels) or not all(re.fullmatch(r"[a-zA-Z]", x) for x in labels):
        return None
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    return Node("seq", items=tuple(node.items[i].items[0] for i in order), brackets="()")


def _sig(node: Node) -> str:
    """A string that is equal for nodes written the same way (spaces aside)."""
    if node.kind == "atom":
        return "a:" + _key(node.text)
    if node.kind == "matrix":
        return "m:" + "\\".join("&".join(_sig(c) for c in row) for row in node.items)
    inner = ",".join(_sig(n) for n in node.items)
    return f"{node.kind}:{node.brackets}:{_key(node.text)}({inner})"


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


# ----------------------------------------------------------------------------- entry point
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
        return _key(gold.strip()) == _key(pred.strip()), "ok"
    g, p = normalize(gold), normalize(pred)
    if _key(g) == _key(p):
        return True, "ok"
    if not p:
        return False, "parse_error"
    _Work.reset()
    if _nodes_equal(_parse(g), _parse(p), rel_tol):
        return True, "ok"
    # 35% is also the number 0.35: a percent on one side only may be read either way.
    pg, pp = bool(_PERCENT.search(gold)), bool(_PERCENT.search(pred))
    if pg != pp:
        scaled = _percent_value(g if pg else p)
        if scaled is not None:
            return _atom_equal(scaled, p, rel_tol) if pg else _atom_equal(g, scaled, rel_tol), "ok"
    return False, "ok"


_PERCENT = re.compile(r"(?:\\?%|\b(?:percent|percentage|pct|per cent))[\s}$.]*$")


def _percent_value(s: str) -> str | None:
    """``s`` (a plain number) divided by 100, written so that a decimal keeps its precision."""
    n = _number(s)
    if n is None:
        return None
    value, ulp = n
    if ulp is None:
        v = value / 100
        return f"\\frac{{{v.numerator}}}{{{v.denominator}}}"
    from decimal import Decimal

    return format(Decimal(s.replace(" ", "")).scaleb(-2), "f")
