"""Grading worker: a fresh interpreter (``python -m aci_jax.grading.worker``) started by ``Grader``.

Protocol, one JSON document per line. stdin: ``[[task_id, gold, pred, engine, rel_tol], ...]``
(a chunk; items are graded in order). stdout: ``"ready"`` once after imports, then
``[task_id, equal, status, t_done]`` per item (``t_done``: ``time.monotonic()`` when it finished), flushed as soon as it is known so that the parent can
time each comparison on its own. The parent enforces the wall-clock limit by killing this
process; here we only add cheaper guards (an address-space limit, death with the parent).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker if the parent dies (a hung comparison would otherwise outlive it)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # parent already gone before prctl took effect
        os._exit(0)


def _limit_memory() -> None:
    mb = int(os.environ.get("ACI_GRADER_MEMORY_MB", "0") or 0)
    if mb > 0:
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _math_verify_equal(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # Timeouts off: math-verify's own timeout is SIGALRM-based; this process is killed instead.
    g = parse(f"${gold}$", parsing_timeout=None)
    p = parse(f"${pred}$", parsing_timeout=None)
    return bool(verify(g, p, timeout_seconds=None))


# Test hooks (tests/test_grading_pool.py): a prediction equal to one of these strings makes the
# worker hang or die, so the kill/restart paths can be exercised deterministically.
_TEST_HANG = os.environ.get("ACI_GRADER_TEST_HANG")
_TEST_CRASH = os.environ.get("ACI_GRADER_TEST_CRASH")


def grade_one(gold: str, pred: str, engine: str, rel_tol: float) -> tuple[bool, str]:
    from .equiv import compare

    if _TEST_HANG is not None and pred == _TEST_HANG:
        while True:
            time.sleep(1)
    if _TEST_CRASH is not None and pred == _TEST_CRASH:
        os._exit(3)
    try:
        if engine == "native":
            return compare(gold, pred, rel_tol)
        if engine == "math_verify":
            if not pred.strip():
                return False, "parse_error"
            return _math_verify_equal(gold, pred), "ok"
        return False, "parse_error"
    except (MemoryError, RecursionError):
        return False, "timeout"  # out of resources: no verdict, like a timeout
    except Exception:  # noqa: BLE001 — a hostile answer must never take the worker down
        return False, "parse_error"


def main() -> None:
    _die_with_parent()
    _limit_memory()
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every call with timeouts off
    from .symbolic import load_sympy

    load_sympy()  # pay the sympy/parser import before announcing readiness
    if os.environ.get("ACI_GRADER_PRELOAD_MV"):
        import math_verify  # noqa: F401
    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
        except json.JSONDecodeError:
            continue
        for tid, gold, pred, engine, rel_tol in chunk:
            equal, status = grade_one(gold, pred, engine, rel_tol)
            # CLOCK_MONOTONIC is system-wide on Linux: the parent starts the next item's clock here.
            out.write(json.dumps([tid, equal, status, time.monotonic()]) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
