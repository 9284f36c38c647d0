"""Cells per second of the sandbox pool against the usual alternatives, measured in one run.

  python benchmarks/bench_sandbox.py [--workers N] [--quick]
  python benchmarks/bench_sandbox.py --baseline-tree DIR [--rounds R]   (A/B against DIR)

Cells: a print cell and a sympy cell. Baselines, all with the same concurrency (N workers):
  (a) cold: a fresh `python -c CELL` subprocess per cell;
  (b) exec pool: the Qwen2.5-Math/ToRA harness approach, exec() in warm worker processes
      (sympy pre-imported) with a per-cell timeout and no isolation at all.
Ours, the pool: persistent mode in steady state (cells into sessions that are already running:
the per-cell cost), persistent mode with 4 cells per session (a rollout trajectory: session
start and close included), and isolated mode (a fresh sandboxed process per cell, worst case).

--baseline-tree DIR compares this checkout's pool with another checkout's (e.g. `git archive
<commit> | tar -x -C DIR`): the same pool measurements, alternating between the two trees in
fresh processes R times (in alternating order), so load changes on a shared machine hit both
alike; prints the median cells/s and the median CPU time per cell (host + all sandbox
processes, over the timed loop only; hardly load-dependent) of each, and the ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aci_jax.sandbox import Sandbox, SandboxConfig  # noqa: E402

CELLS = {
    "print": "print(1 + 1)",
    "sympy": "import sympy\nx = sympy.Symbol('x')\nprint(sympy.factor(x**2 - 1))",
}
EXPECT = {"print": "2", "sympy": "(x - 1)*(x + 1)"}


def bench_cold(code: str, n: int, workers: int) -> float:
  env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENBLAS_NUM_THREADS": "1"}
  def one(_):
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    return p.stdout.strip()
  with cf.ThreadPoolExecutor(workers) as ex:
    t = time.perf_counter()
    outs = list(ex.map(one, range(n)))
    dt = time.perf_counter() - t
  assert len(set(outs)) == 1, set(outs)
  return n / dt


def _warm_worker():
  import sympy  # noqa: F401  (the harness's workers are warm too)
  import numpy  # noqa: F401


def _exec_cell(code: str) -> str:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(code, {})
  return buf.getvalue().strip()


def bench_exec_pool(code: str, n: int, workers: int) -> float:
  with cf.ProcessPoolExecutor(workers, initializer=_warm_worker) as ex:
    list(ex.map(_exec_cell, [code] * workers))  # start the workers outside the timing
    t = time.perf_counter()
    futs = [ex.submit(_exec_cell, code) for _ in range(n)]
    outs = [f.result(timeout=5) for f in futs]
    dt = time.perf_counter() - t
  assert len(set(outs)) == 1
  return n / dt


def bench_pool(code: str, n: int, workers: int, mode: str, per_session: int) -> float:
  with Sandbox(SandboxConfig(mode=mode, max_workers=workers)) as sb:
    sb.run("warm", code)
    sb.close_session("warm")
    t = time.perf_counter()
    futs = []
    for i in range(n):
      futs.append(sb.submit(i // per_session, code))
      if i % per_session == per_session - 1:
        sb.close_session(i // per_session)  # closes after its queued cells
    outs = [f.result() for f in futs]
    dt = time.perf_counter() - t
  bad = [o for o in outs if not o.ok]
  assert not bad, bad[:2]
  assert {o.output for o in outs} == {EXPECT[kind_of(code)]}
  return n / dt


# One A/B measurement in a fresh process, against the sandbox of the checkout in argv[1]:
# cells/s over the same submit loop as bench_pool, and the CPU time per cell of the host and
# every sandbox process (server, zygote with its reaped sessions, live sessions) over the timed
# loop only. CPU time hardly depends on the machine's load, unlike cells/s.
_AB_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from aci_jax.sandbox import Sandbox, SandboxConfig
from aci_jax.sandbox.pool import pids_with_uid
code, n, workers, mode, per = json.loads(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid, reaped=False):
  try:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  return sum(int(x) for x in f[11:15 if reaped else 13]) / tick

def total(sb):
  ids = sb.process_ids()
  me = resource.getrusage(resource.RUSAGE_SELF)
  live = sum(cpu(p) for p in pids_with_uid(*sb.uid_range))
  return me.ru_utime + me.ru_stime + cpu(ids["server"]) + live + cpu(ids["zygote"], True)

with Sandbox(SandboxConfig(mode=mode, max_workers=workers)) as sb:
  sb.run("warm", code)
  sb.close_session("warm")
  c0, t = total(sb), time.perf_counter()
  futs = []
  for i in range(n):
    futs.append(sb.submit(i // per, code))
    if i % per == per - 1:
      sb.close_session(i // per)
  outs = [f.result() for f in futs]
  dt = time.perf_counter() - t
  time.sleep(0.3)  # closed sessions exit and are reaped into the zygote's children's time
  c1 = total(sb)
assert all(o.ok for o in outs), [o for o in outs if not o.ok][:2]
print(n / dt, 1000 * (c1 - c0) / n)
"""


def bench_ab(baseline: str, workers: int, rounds: int) -> None:
  import json
  import statistics
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cases = [("print", 2000, "persistent", 500), ("print", 400, "persistent", 4),
           ("print", 200, "isolated", 1), ("sympy", 1000, "persistent", 250),
           ("sympy", 200, "persistent", 4)]
  print(f"A/B: {here} (new) vs {baseline} (baseline), {rounds} alternating rounds, "
        f"workers={workers}")
  print(f"{'cell':6} {'mode':11} {'cells/sess':>10} | {'cells/s: base':>13} {'new':>8} "
        f"{'new/base':>8} | {'CPU ms/cell: base':>17} {'new':>6} {'new/base':>8}")
  for kind, n, mode, per in cases:
    res = {baseline: ([], []), here: ([], [])}
    for r in range(rounds):
      for tree in ((baseline, here) if r % 2 == 0 else (here, baseline)):
        out = subprocess.run([sys.executable, "-c", _AB_CHILD, tree,
                              json.dumps([CELLS[kind], n, workers, mode, per])],
                             capture_output=True, text=True, check=True, cwd=tree)
        rate, cpu_ms = map(float, out.stdout.strip().splitlines()[-1].split())
        res[tree][0].append(rate)
        res[tree][1].append(cpu_ms)
    (br, bc), (hr, hc) = ([statistics.median(v) for v in res[t]] for t in (baseline, here))
    print(f"{kind:6} {mode:11} {per:10d} | {br:13.1f} {hr:8.1f} {hr / br:8.3f} | "
          f"{bc:17.2f} {hc:6.2f} {hc / bc:8.3f}")


def kind_of(code: str) -> str:
  return next(k for k, c in CELLS.items() if c == code)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workers", type=int, default=os.cpu_count())
  ap.add_argument("--quick", action="store_true", help="fewer cells (noisier)")
  ap.add_argument("--baseline-tree", help="another checkout to compare the pool with (A/B)")
  ap.add_argument("--rounds", type=int, default=5, help="A/B rounds per measurement")
  args = ap.parse_args()
  if args.baseline_tree:
    bench_ab(os.path.abspath(args.baseline_tree), args.workers, args.rounds)
    return
  w, q = args.workers, 4 if args.quick else 1
  print(f"workers={w}  python={sys.version.split()[0]}  cpus={os.cpu_count()}")
  with Sandbox() as sb:
    print("isolation:", sb.isolation["tier"], "network:", sb.isolation["network"])
  print(f"\n{'cell':6} {'method':42} {'cells/s':>9} {'vs cold':>8} {'vs exec pool':>13}")
  for kind, code in CELLS.items():
    n_cold = (160 if kind == "print" else 24) // q
    n = 4000 // q
    res = [("(a) cold python -c per cell", bench_cold(code, n_cold, w)),
           ("(b) exec pool + timeout (no isolation)", bench_exec_pool(code, n, w)),
           ("ours: persistent, steady state", bench_pool(code, n, w, "persistent", n // (2 * w))),
           ("ours: persistent, 4 cells per session", bench_pool(code, n, w, "persistent", 4)),
           ("ours: isolated, new process per cell", bench_pool(code, n // 8, w, "isolated", 1))]
    cold, execp = res[0][1], res[1][1]
    for name, rate in res:
      print(f"{kind:6} {name:42} {rate:9.1f} {rate / cold:7.1f}x {rate / execp:12.3f}x")


if __name__ == "__main__":
  main()
