"""Answer extraction and equivalence grading (rules: docs/grading.md).

    extract_answer(response) -> str | None        final \\boxed{}/\\fbox{} answer of a model response
                                                   (boxes written as one answer are joined)
    extract_gold(text, style) -> str               MATH / GSM8K (####) / plain gold answers
    is_equiv(gold, pred) -> GradeResult            one comparison in a killable worker
    Grader(...).grade_batch(pairs) / .submit(...)  pool: batch and non-blocking APIs, cache, metrics

Only the standard library is imported here; sympy and the LaTeX parser load in the workers.
"""

from __future__ import annotations

import threading

from .equiv import DEFAULT_REL_TOL, compare
from .extract import FALLBACKS, extract_answer, extract_gold, last_boxed
from .pool import ENGINES, GradeResult, Grader

__all__ = ["extract_answer", "extract_gold", "last_boxed", "is_equiv", "compare", "GradeResult",
           "Grader", "ENGINES", "FALLBACKS", "DEFAULT_REL_TOL", "default_grader"]

_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    """A shared 1-worker Grader (5 s limit), started on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Grader(num_workers=1)
        return _default


def is_equiv(gold, pred: str, *, response: bool = False, timeout: float | None = None,
             rel_tol: float = DEFAULT_REL_TOL, in_process: bool = False) -> GradeResult:
    """Grade one pair. By default it runs in the shared worker (hard 5 s limit).

    ``in_process=True`` compares in this process without the time limit (trusted inputs only).
    ``timeout``/``rel_tol`` other than the defaults use a short-lived dedicated Grader.
    """
    if in_process:
        gold_s = extract_gold(gold, "auto")
        pred_x = extract_answer(pred) if response else pred.strip()
        equal, status = compare(gold_s, pred_x, rel_tol)
        return GradeResult(equal, status, pred_x)
    if timeout is None and rel_tol == DEFAULT_REL_TOL:
        return default_grader().grade(gold, pred, response=response)
    with Grader(num_workers=1, timeout=timeout or 5.0, rel_tol=rel_tol) as g:
        return g.grade(gold, pred, response=response)
