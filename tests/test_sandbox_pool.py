"""The executor: non-blocking submit, bounded concurrency, backpressure, crash restart,
metrics, clean shutdown, and a server image that owes nothing to the host (issue 3, item 5)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import time

import pytest

from aci_jax.sandbox import Sandbox, SandboxConfig, Status
from aci_jax.sandbox.pool import pids_with_uid


def procs_with_uid(lo: int, hi: int) -> list[int]:
  return pids_with_uid(lo, hi, zombies=True)  # a zombie left behind counts as a leak


def alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except OSError:
    return False


def wait_until(pred, timeout=10.0):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if pred():
      return True
    time.sleep(0.02)
  return pred()


def test_submit_does_not_block_and_concurrency_is_bounded():
  with Sandbox(SandboxConfig(max_workers=1, timeout_s=5)) as sb:
    code = "import time\nt0 = time.time()\ntime.sleep(0.4)\nprint(t0, time.time())"
    t = time.monotonic()
    futs = [sb.submit(f"s{i}", code) for i in range(3)]
    assert time.monotonic() - t < 0.1  # the host thread is free while cells run
    spans = sorted(tuple(map(float, f.result().output.split())) for f in futs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
      assert start >= end - 0.01, "two cells ran at once with max_workers=1"


def test_backpressure():
  with Sandbox(SandboxConfig(max_pending=2, max_workers=1, timeout_s=5)) as sb:
    a = sb.submit("a", "import time\ntime.sleep(0.5)")
    sb.submit("b", "1")
    with pytest.raises(queue.Full):
      sb.submit("c", "1", block=False)
    with pytest.raises(queue.Full):
      sb.submit("c", "1", timeout=0.05)
    late = sb.submit("c", "2 + 2")  # blocks until a cell finishes, then goes through
    assert a.done() and late.result().output == "4"


def test_server_crash_fails_in_flight_cells_and_restarts():
  with Sandbox(SandboxConfig(max_workers=2, timeout_s=5)) as sb:
    assert sb.run("keep", "base = 40").status == Status.OK
    old = sb.process_ids()
    futs = [sb.submit(s, "import time\ntime.sleep(3)") for s in ("keep", "other")]
    time.sleep(0.5)
    os.kill(old["server"], signal.SIGKILL)
    results = [f.result(timeout=20) for f in futs]
    assert [r.status for r in results] == [Status.SANDBOX_FAILURE] * 2
    assert "SandboxFailure" in results[0].output
    assert wait_until(lambda: sb.process_ids()["server"] not in (None, old["server"]))
    assert not alive(old["zygote"]), "the old zygote outlived its server"
    # The persistent session is rebuilt from its successful cells; nothing is silently retried.
    r = sb.run("keep", "base + 2")
    assert r.status == Status.OK and r.output == "42"
    m = sb.metrics()
    assert m["sandbox/restarts"] == 1 and m["sandbox/status/sandbox_failure"] == 2


def test_zygote_crash_is_a_server_crash():
  with Sandbox(SandboxConfig(timeout_s=5)) as sb:
    old = sb.process_ids()
    fut = sb.submit("x", "import time\ntime.sleep(3)")
    time.sleep(0.5)
    os.kill(old["zygote"], signal.SIGKILL)
    assert fut.result(timeout=20).status == Status.SANDBOX_FAILURE
    assert sb.run("y", "1 + 1").output == "2"
    assert sb.process_ids()["zygote"] != old["zygote"]


def test_metrics_count_statuses_and_latency_percentiles():
  with Sandbox(SandboxConfig(timeout_s=0.5)) as sb:
    for code in ["1", "2", "1/0", "while True: pass"]:
      sb.run("m", code)
    m = sb.metrics(reset=True)
    assert (m["sandbox/cells"], m["sandbox/status/ok"], m["sandbox/status/error"],
            m["sandbox/status/timeout"]) == (4, 2, 1, 1)
    assert 0.5 <= m["sandbox/latency_max_s"] < 1.5
    assert m["sandbox/latency_p50_s"] <= m["sandbox/latency_p90_s"] <= m["sandbox/latency_max_s"]
    assert sb.metrics()["sandbox/cells"] == 0


def test_shutdown_leaves_nothing_behind_and_server_owes_nothing_to_host():
  import jax  # the host has initialised JAX (threads, XLA_FLAGS): the server must not inherit it
  jax.numpy.zeros(2).block_until_ready()
  sb = Sandbox(SandboxConfig(timeout_s=5))
  pids = sb.process_ids()
  for pid in pids.values():
    with open(f"/proc/{pid}/maps") as f:
      assert "jaxlib" not in f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
      env = f.read()
    assert b"XLA_FLAGS" not in env and b"JAX_PLATFORMS" not in env
  assert sb.isolation["threads"] == 1
  sb.submit("a", "import time\ntime.sleep(10)")
  sb.run("b", "x = 1")
  root, lo_hi = sb._root, sb.uid_range
  t = time.monotonic()
  sb.shutdown()
  assert time.monotonic() - t < 5
  assert not os.path.exists(root)
  # Killed processes can take a moment to be reaped by the kernel on a loaded machine (this
  # flaked once in a full parallel run); nothing may be left once they are.
  assert wait_until(lambda: not any(alive(p) for p in pids.values()), timeout=5)
  assert wait_until(lambda: procs_with_uid(*lo_hi) == [], timeout=5), procs_with_uid(*lo_hi)
  with pytest.raises(RuntimeError):
    sb.submit("a", "1")


def test_lru_eviction_rebuilds_sessions():
  with Sandbox(SandboxConfig(max_sessions=2, timeout_s=5)) as sb:
    for s in ("a", "b", "c"):
      sb.run(s, f"name = {s!r}")
    assert sb.metrics()["sandbox/live_sessions"] <= 2  # bounded; the LRU one was closed
    assert [sb.run(s, "name").output for s in ("a", "b", "c")] == ["'a'", "'b'", "'c'"]


def test_a_closed_key_can_start_a_new_session_at_once():
  with Sandbox(SandboxConfig(timeout_s=5)) as sb:
    old = sb.submit("row5", "import time\ntime.sleep(0.3)\nv = 'old'\nv")
    sb.close_session("row5")          # closes after its queued cell
    new = sb.submit("row5", "v")      # a new trajectory on the same slot: fresh state
    assert old.result().output == "'old'"
    r = new.result()
    assert r.status == Status.ERROR and "NameError" in r.output


def test_spares_are_pristine_children_of_the_zygote():
  with Sandbox(SandboxConfig(spares=3, timeout_s=5)) as sb:
    for i in range(5):
      sb.run(i, "import os\nx = os.getpid()")
      sb.close_session(i)
    z = sb.process_ids()["zygote"]
    assert wait_until(lambda: len(procs_with_uid(*sb.uid_range)) == 3)
    for pid in procs_with_uid(*sb.uid_range):
      with open(f"/proc/{pid}/status") as f:
        st = dict(l.split(":", 1) for l in f)
      assert int(st["PPid"]) == z and int(st["Threads"]) == 1
      with open(f"/proc/{pid}/task/{pid}/children") as f:
        assert f.read().strip() == ""
    # A new session takes a spare: its first cell does not wait for fork + lock-down.
    r = sb.run("new", "1 + 1")
    assert r.output == "2"
    lo_hi = sb.uid_range
  assert procs_with_uid(*lo_hi) == []


def test_the_leak_observer_sees_a_live_process_of_a_uid():
  # The leak checks above rely on this /proc scan; show it is not vacuous.
  uid = 1_999_000_123
  p = subprocess.Popen(["sleep", "30"], user=uid, group=uid)
  try:
    assert wait_until(lambda: p.pid in procs_with_uid(uid, uid + 1), 5)
    assert procs_with_uid(uid + 1, uid + 2) == []
  finally:
    p.kill()
    p.wait()
  assert procs_with_uid(uid, uid + 1) == []


def test_a_session_that_died_while_idle_is_rebuilt_not_silently_emptied():
  with Sandbox(SandboxConfig(timeout_s=5, spares=0)) as sb:
    sb.run("s", "keep = 7")
    for pid in procs_with_uid(*sb.uid_range):  # the session's only process: kill it from outside
      os.kill(pid, signal.SIGKILL)
    # Once the server has seen the death (a cell sent before that is reported `killed`), the
    # next cell runs on a process rebuilt from the session's successful cells.
    assert wait_until(lambda: sb.metrics()["sandbox/live_sessions"] == 0)
    r = sb.run("s", "keep * 6")
    assert r.status == Status.OK and r.output == "42", r


def test_cell_sent_right_after_an_idle_death_is_rerun_once():
  """Kill an idle session and submit at once, many times: the cell may reach the server
  before the death is known there ("lost"), and is then re-sent to a rebuilt process. Each
  cell resolves exactly once with the rebuilt state, and the pool keeps working (a re-queued
  future used to be started twice, which killed the pool's I/O thread)."""
  with Sandbox(SandboxConfig(timeout_s=5, spares=0)) as sb:
    for k in range(20):
      sb.run(("s", k), "keep = 7")
      for pid in procs_with_uid(*sb.uid_range):
        os.kill(pid, signal.SIGKILL)
      r = sb.submit(("s", k), "keep * 6").result(timeout=20)
      assert r.status in (Status.OK, Status.KILLED), r
      if r.status == Status.OK:
        assert r.output == "42", r
      sb.close_session(("s", k))
    assert sb.run("t", "print(6 * 7)").output == "42"


def test_cell_queued_for_a_session_the_server_kills_while_idle_runs_on_a_rebuilt_one():
  """The server kills an idle session that runs code after its result (here: a cell replaced
  the runner's read loop with a spin) while that session's next cell waits at the server for a
  free worker, and the zygote has not yet reported the death when the worker frees up. The
  kill is the server's own decision, so the queued cell must be re-run on a rebuilt process,
  not reported `killed` by a SIGKILL it had nothing to do with (the stress test saw 14 such
  cells in 10,000 on a loaded CI machine). The zygote is stopped to hold that window open."""
  with Sandbox(SandboxConfig(timeout_s=10, max_workers=1, spares=0)) as sb:
    spin = "import os\ndef spin(fd, n):\n  while True:\n    pass\nos.read = spin\nprint('patched')"
    assert sb.run("b", "pass").status == Status.OK  # b's process exists before the zygote stops
    assert sb.run("a", spin).output == "patched"
    zygote = sb.process_ids()["zygote"]
    os.kill(zygote, signal.SIGSTOP)  # kill requests and exits wait in its socket meanwhile
    try:
      blocker = sb.submit("b", "import time\ntime.sleep(4)\nprint('slept')")  # the one worker
      queued = sb.submit("a", "print(6 * 7)")  # reaches the server now, waits behind `blocker`
      assert blocker.result(timeout=30).output == "slept"  # `a` was condemned meanwhile
    finally:
      os.kill(zygote, signal.SIGCONT)
    r = queued.result(timeout=30)
    assert r.status == Status.OK and r.output == "42", r


def test_a_slow_start_of_the_session_process_is_not_the_cells_time():
  # A new session's process is forked by the zygote, which may be busy (tearing down dead
  # sessions on a loaded machine): stopping it for 1.5 s stands in for that. The cell's 1 s
  # clock must hold its own execution only; before this was fixed it counted the wait and a
  # right cell came back as a timeout (1-2 in 10,000 in CI beside a CPU-heavy test).
  with Sandbox(SandboxConfig(timeout_s=1.0, spares=0)) as sb:
    zygote = sb.process_ids()["zygote"]
    os.kill(zygote, signal.SIGSTOP)
    try:
      fut = sb.submit("late", "print(6 * 7)")
      time.sleep(1.5)
      assert not fut.done()
    finally:
      os.kill(zygote, signal.SIGCONT)
    r = fut.result(timeout=20)
    assert (r.status, r.output) == (Status.OK, "42")
    assert r.seconds < 1.0 < r.latency  # seconds: execution; latency: submit to result
    # The cell's own limit still holds for a cell that waited for its process.
    os.kill(zygote, signal.SIGSTOP)
    try:
      fut = sb.submit("late spin", "while True:\n  pass")
      time.sleep(1.5)
    finally:
      os.kill(zygote, signal.SIGCONT)
    assert fut.result(timeout=20).status == Status.TIMEOUT


def test_a_session_that_never_starts_is_a_sandbox_failure_not_a_timeout():
  with Sandbox(SandboxConfig(timeout_s=5.0, start_timeout_s=0.5, spares=0)) as sb:
    zygote = sb.process_ids()["zygote"]
    os.kill(zygote, signal.SIGSTOP)
    try:
      r = sb.submit("stuck", "1 + 1").result(timeout=20)
    finally:
      os.kill(zygote, signal.SIGCONT)
    assert r.status == Status.SANDBOX_FAILURE and "did not start within 0.5 s" in r.output
    assert sb.run("next", "2 + 3").output == "5"  # the pool goes on; nothing was restarted
    assert sb.metrics()["sandbox/restarts"] == 0
    # the late-forked "stuck" process is killed on arrival: only "next" stays alive
    assert wait_until(lambda: len(procs_with_uid(*sb.uid_range)) == 1)


def test_start_timeout_must_be_positive():
  with pytest.raises(ValueError, match="start_timeout_s"):
    SandboxConfig(start_timeout_s=0).resolved()
