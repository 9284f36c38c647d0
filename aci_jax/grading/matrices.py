"""Matrices written as answers: the cells of one ``\\begin{pmatrix}...\\end{pmatrix}`` (or array),
and the value of a small matrix expression (sums, products, scalar multiples, small powers)."""

from __future__ import annotations

import re

from .limits import LIMITS, WORK, Refused
from .normalize import brace_stats
from .numeric import DIGIT_SPACE_DIGIT
from .symbolic import GROWTH, guard, load_sympy, log10_bound, parse_or_none

def matrix_cells(s: str) -> tuple[tuple[str, ...], ...] | None:
    """The cells (rows of strings) of one matrix environment; None for anything else."""
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
        return None  # several matrices: an expression (see matrix_expr_cells)
    if env == "array" and body.startswith("{"):
        close = body.find("}")
        body = body[close + 1:]
    rows = [r for r in body.split("\\\\")]
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows or sum(r.count("&") + 1 for r in rows) > LIMITS.max_items:
        return None
    return tuple(tuple(c.strip() for c in r.split("&")) for r in rows)


def matrix_expr_cells(s: str) -> tuple[tuple[str, ...], ...] | None:
    """A sum, product, scalar multiple or small power of matrices, evaluated: the cells of its matrix
    value, in LaTeX."""
    if len(s) > 2 * LIMITS.max_sympy_len or s.count("\\begin{") > 6:
        return None
    if s.count("&") + s.count("\\\\") > 200 or not brace_stats(s)[1] or brace_stats(s)[0] > LIMITS.max_brace_depth:
        return None
    if re.search(r"\d{%d,}" % 30, s) or s.count("^") > 4 or DIGIT_SPACE_DIGIT.search(s):
        return None
    try:
        WORK.charge(len(s))
    except Refused:
        return None
    sympy = load_sympy()[0]
    e = parse_or_none(s)
    if e is None or not _has_matrix(e, sympy):
        return None
    # Every number is computed by the sums and products below, so all of them (matrix entries and
    # scalar factors alike) must be small: 9^{9^{9}} anywhere is refused, not multiplied.
    scalars = [n for n in sympy.preorder_traversal(e) if not isinstance(n, (sympy.MatrixBase, sympy.MatrixExpr))]
    entries = [x for n in sympy.preorder_traversal(e) if isinstance(n, sympy.MatrixBase) for x in n]
    try:
        for x in scalars + entries:
            guard(x, sympy)
            for node in sympy.preorder_traversal(x):
                grows = node.is_Pow or node.func.__name__ in GROWTH
                if node.is_number and grows and log10_bound(node, sympy) > 1000:
                    return None
    except Refused:
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
        return tuple(tuple(sympy.latex(v[i, j]) for j in range(v.cols)) for i in range(v.rows))
    except Exception:  # noqa: BLE001 - an entry sympy cannot print is not a value we can compare
        return None


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
