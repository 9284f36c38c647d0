"""One-variable relations: our sign-analysis solver (aci_jax/grading/inequalities.py) against
``sympy.solveset``, the solver the grader used before, on the same relations in one process.

    python benchmarks/bench_inequalities.py [--repeat 3] [--solveset-timeout 20]

Prints, per relation, the best-of-N wall time of each and the ratio, then the totals; and checks
that both give the same set (a relation solveset does not finish within the timeout, run in a
child process, is reported as such and left out of the totals). sympy's caches are cleared
before every call so that a repeat does not time a cache hit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sympy  # noqa: E402
from sympy.core.cache import clear_cache  # noqa: E402

from aci_jax.grading.inequalities import solve_chain  # noqa: E402

X = sympy.Symbol("x")
A = sympy.Abs
REL = {"<": sympy.StrictLessThan, ">": sympy.StrictGreaterThan, "\\leq": sympy.LessThan,
       "\\geq": sympy.GreaterThan, "\\ne": sympy.Unequality}

# Answers of the kind MATH gold answers and model predictions hold: rational roots, surd roots,
# quotients, absolute values, two-sided chains.
CASES = [
    ("x^2 - x - 2 > 0", [X**2 - X - 2, 0], [">"]),
    ("(x-1)/(x+2) <= 0", [(X - 1) / (X + 2), 0], ["\\leq"]),
    ("x^2 - 2 < 0", [X**2 - 2, 0], ["<"]),
    ("x^2 - 3x - 1 >= 0", [X**2 - 3 * X - 1, 0], ["\\geq"]),
    ("|x^2 - 5| < 3", [A(X**2 - 5), 3], ["<"]),
    ("2 < |x| < 5", [2, A(X), 5], ["<", "<"]),
    ("-3 < 2x + 1 <= 5", [-3, 2 * X + 1, 5], ["<", "\\leq"]),
    ("(2x^2 - 7)/(x^2 + x - 1) <= 0", [(2 * X**2 - 7) / (X**2 + X - 1), 0], ["\\leq"]),
    ("(17x-53)/(13x+31) > (23x-71)/(19x+1)", [(17 * X - 53) / (13 * X + 31), (23 * X - 71) / (19 * X + 1)], [">"]),
    ("|(17x-53)/(13x+31)| >= |(23x-71)/(19x+1)|", [A((17 * X - 53) / (13 * X + 31)), A((23 * X - 71) / (19 * X + 1))], ["\\geq"]),
    ("|17x^2-53x+61| < |13x^2+31x-97|", [A(17 * X**2 - 53 * X + 61), A(13 * X**2 + 31 * X - 97)], ["<"]),
    ("1 < x^2 - x <= 5", [1, X**2 - X, 5], ["<", "\\leq"]),
]


def _solveset(parts, ops):
    out = sympy.S.Reals
    for i, op in enumerate(ops):
        out = sympy.Intersection(out, sympy.solveset(REL[op](parts[i], parts[i + 1]), X, sympy.S.Reals))
    return out


def _child(parts, ops, q):
    q.put(str(_solveset(parts, ops)))


def _best(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        clear_cache()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--solveset-timeout", type=float, default=20.0)
    args = ap.parse_args()
    ours_total = base_total = 0.0
    print(f"{'relation':45s} {'ours s':>8s} {'solveset s':>11s} {'ratio':>7s}  same set")
    for name, parts, ops in CASES:
        t_ours, got = _best(lambda: solve_chain(parts, ops, X, sympy), args.repeat)
        # solveset in a child first, so a relation it cannot finish is reported, not waited on
        q = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=_child, args=(parts, ops, q))
        p.start()
        p.join(args.solveset_timeout)
        if p.is_alive():
            p.kill()
            print(f"{name:45s} {t_ours:8.3f} {'> ' + str(args.solveset_timeout):>11s} {'':>7s}  (solveset timed out)")
            continue
        t_base, want = _best(lambda: _solveset(parts, ops), args.repeat)
        same = got is not None and sympy.Complement(got, want).simplify() == sympy.S.EmptySet and \
            sympy.Complement(want, got).simplify() == sympy.S.EmptySet
        ours_total += t_ours
        base_total += t_base
        print(f"{name:45s} {t_ours:8.3f} {t_base:11.3f} {t_base / t_ours:6.1f}x  {same}")
    print(f"{'total (both finished)':45s} {ours_total:8.3f} {base_total:11.3f} {base_total / ours_total:6.1f}x")


if __name__ == "__main__":
    main()
