"""The worker pool: hard time limit by killing, restart, crash handling, cache, shutdown, spawn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import Future

import pytest

from aci_jax.grading import Grader, GradeResult, is_equiv

HANG = "<<hang forever>>"
CRASH = "<<crash now>>"


@pytest.fixture()
def hook_env(monkeypatch):
    monkeypatch.setenv("ACI_GRADER_TEST_HANG", HANG)
    monkeypatch.setenv("ACI_GRADER_TEST_CRASH", CRASH)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_worker_and_pool_recovers(hook_env):
    with Grader(num_workers=1, timeout=1.0) as g:
        assert g.grade("1", "1").equal  # worker is up
        pid = g.worker_pids()[0]
        t0 = time.monotonic()
        r = g.grade("1", HANG)
        dt = time.monotonic() - t0
        assert r == GradeResult(False, "timeout", HANG)
        assert 1.0 <= dt < 4.0
        assert not _alive(pid)
        assert g.worker_pids()[0] != pid
        # the replacement grades normally; the metrics count the timeout
        assert g.grade("2", r"\frac{4}{2}").equal
        st = g.stats()
        assert st["timeouts"] == 1 and st["worker_restarts"] == 1


def test_rest_of_chunk_is_requeued_after_a_kill(hook_env):
    with Grader(num_workers=1, timeout=1.0, chunk=16) as g:
        res = g.grade_batch([("1", "1"), ("1", HANG), ("3", "3.0"), ("4", "5")])
        assert [(r.equal, r.status) for r in res] == [(True, "ok"), (False, "timeout"), (True, "ok"), (False, "ok")]


def test_worker_crash_is_a_timeout_and_restarts(hook_env):
    with Grader(num_workers=1, timeout=5.0) as g:
        r = g.grade("1", CRASH)
        assert (r.equal, r.status) == (False, "timeout")
        assert g.stats()["worker_deaths"] == 1
        assert g.grade("x+1", "1+x").equal


def test_math_verify_hang_is_contained():
    # math-verify itself hangs on this input (its SIGALRM timeout is off in our workers).
    import math_verify  # noqa: F401  (a test dependency: fail loudly when it is missing)
    with Grader(num_workers=1, timeout=2.0, engine="math_verify") as g:
        t0 = time.monotonic()
        r = g.grade("1", "9^{9^{9^{9}}}")
        assert r.status == "timeout" and not r.equal
        assert time.monotonic() - t0 < 6.0
        assert g.grade(r"\frac{1}{2}", "0.5").equal


def test_cache_and_inflight_dedup():
    with Grader(num_workers=2) as g:
        futs = [g.submit(r"\frac{1}{3}", "0.33333") for _ in range(5)]
        assert all(f.result(timeout=30).equal for f in futs)
        assert g.grade(r"\frac{1}{3}", "0.33333").equal
        st = g.stats()
        assert st["graded"] == 1 and st["cache_hits"] == 5 and st["submitted"] == 6


def test_submit_is_non_blocking_and_batch_keeps_order(hook_env):
    with Grader(num_workers=2, timeout=1.5) as g:
        t0 = time.monotonic()
        f = g.submit("1", HANG)
        assert isinstance(f, Future) and time.monotonic() - t0 < 0.5
        pairs = [{"gold": str(i), "pred": f"\\boxed{{{i if i % 3 else i + 1}}}", "response": True} for i in range(40)]
        res = g.grade_batch(pairs)
        assert [r.equal for r in res] == [bool(i % 3) for i in range(40)]
        assert [r.pred_extracted for r in res] == [str(i if i % 3 else i + 1) for i in range(40)]
        assert f.result(timeout=10).status == "timeout"


def test_close_leaves_no_processes_and_workers_are_fresh_interpreters():
    g = Grader(num_workers=2)
    assert g.grade("2", "2").equal
    pids = g.worker_pids()
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"aci_jax.grading.worker" in argv  # exec'd, not a fork of this process
    g.close()
    g.close()  # idempotent
    assert not any(_alive(p) for p in pids)
    with pytest.raises(RuntimeError):
        g.submit("1", "1")


def test_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from aci_jax.grading import Grader\n"
        "g = Grader(num_workers=2)\n"
        "g.grade('1', '1')\n"
        "print(' '.join(map(str, g.worker_pids())), flush=True)\n"
        "os._exit(0)  # no clean shutdown\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_is_equiv_and_bad_arguments():
    assert is_equiv("\\frac{1}{2}", "0.5").equal
    assert not is_equiv("50", "0.5").equal
    r = is_equiv("5", "no box here", response=True)
    assert (r.equal, r.status, r.pred_extracted) == (False, "parse_error", None)
    assert is_equiv("1,-2", "-2, 1", in_process=True).equal
    with pytest.raises(ValueError):
        Grader(engine="nope")
    with pytest.raises(ValueError):
        Grader(timeout=0)


def test_grader_made_in_a_short_lived_thread_keeps_its_workers():
    # PR_SET_PDEATHSIG follows the creating thread; workers must not die when that thread ends.
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("g", Grader(num_workers=1)))
    t.start()
    t.join()
    with box["g"] as g:
        time.sleep(1.0)
        assert g.grade("7", "7.0").equal
        assert g.stats()["worker_deaths"] == 0
