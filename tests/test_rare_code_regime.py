"""Issue 16 item 2 at a small, fast scale: the rare-code regime's warm-up (configs/default.py:
rare_code: every problem also has a demo that *asks* for code and one whose code prefix is
forced, and only epsilon = 1% of the un-asked demos choose code) gives a policy that *can* code
but seldom *chooses* to.

Measured on the warm-up policy of a shrunken rare_code run (the production `autocode` mode with
em.iterations = 0, so the run is warm-up + evaluation):
- native code rate: the exact probability, at the E-step's sampling temperature, that an
  un-asked held-out prompt's response opens a cell (`decision_probe.prefix_logprob`, one
  forward per prompt): <= 2% on average over the queries, the issue's bar;
- forced-code accuracy: the evaluation's forced code-mode rollouts (greedy, real sandbox) on
  held-out problems: >= 0.8;
- and, as the control that the asked demos did their job, the same prompts *with* the trigger
  open a cell with probability >= 0.9.
The measurements behind this scale, and the full six-family variant's, are in docs/em_log.md
("The rare-code regime").
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One family (`add`), the default's 6-layer policy, 1,000 warm-up steps of 32 demos over 2,000
# problems (each with its un-asked, its asked and its forced demo). Measured 2026-12-05, seed 0
# (the test's): native P(code) mean 1.52% (p90 1.78%), forced-code accuracy 1.00, asked P(code)
# 1.00, cells exact after the forced prefix 1.00; 1,633 s beside a full warm-up on the 2-core VM.
# Before the forced demos (2026-12-04, seeds 0-3): native P(code) mean 1.2% / 0.7% / 1.7% /
# 1.2%, forced-code accuracy 1.00 / 1.00 / 1.00 / 0.98. Why this scale: at 16 demos over 1,000 problems
# forced-code accuracy ran from 0.60 to 1.00 across seeds and
# environments (this test's earlier setting passed at 1.00, then read 0.60 with a rebuilt
# venv and the same code): cells were right but \boxed{} often held the printed value + 1, as
# if the policy recomputed the sum instead of copying it. 1,500 steps did not help
# (seed 1: 0.66 -> 0.68); 4,000 problems did (0.84-0.96) but pushed one seed's native P(code) to
# 2.5%. docs/em.md, "The rare-code regime", has the table.
# Every problem is also asked (triggered_fraction 1.0, the variant's share before it took six
# families and 0.25), and no warm-up gate (`:rare_code_ungated`; `:rare_code`'s probes name its
# six families, and its tail would train on past the 1,000 steps): the scale measured here,
# pinned.
FAMILIES = ("add",)
SMALL = ["--config.em.iterations=0", "--config.progress=False",
         f"--config.task.families={FAMILIES!r}", "--config.task.train_per_family=2000",
         "--config.task.triggered_fraction=1.0",
         "--config.task.warmup_examples=2000", "--config.task.eval_per_family=50",
         "--config.warmup.steps=1000", "--config.warmup.batch_size=32"]


@pytest.mark.run_first  # minutes on one worker
def test_rare_code_warmup_can_code_but_seldom_chooses_to(tmp_path):
  from aci_jax.eval import rare_code_bars

  work = tmp_path / "rare"
  run = subprocess.run(
      [sys.executable, "-m", "aci_jax.main", "--config",
       os.path.join(ROOT, "configs", "default.py") + ":rare_code_ungated", "--workdir", str(work),
       *SMALL], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
      timeout=2400)  # ~950 s on a 2-core VM next to another run
  assert run.returncode == 0, run.stderr[-3000:]
  config = json.loads((work / "config.json").read_text())
  assert config["task"]["code_fraction"] == 0.01  # the variant's epsilon reached the run
  # P(code) at the sampling temperature on the 50 held-out problems, un-asked and asked, and
  # the evaluation's forced code-mode accuracy: every bar of rare_code_bars (the module the
  # five-family measurement in docs/em_log.md uses).
  rates = rare_code_bars.code_rates(str(work))
  assert len(rates.native) == 50 and set(rates.families) == set(FAMILIES)
  lines, misses = rare_code_bars.judge(str(work), rates)
  assert not misses, "\n".join(lines + misses)


def _fake_run(tmp_path, forced_by_family: dict) -> str:
  run = tmp_path / "run"
  (run / "eval" / "warmup").mkdir(parents=True)
  n = len(forced_by_family)
  summary = {"selection": {"forced_code_accuracy": sum(forced_by_family.values()) / n},
             "by_family": {f: {"selection": {"forced_code_accuracy": a}}
                           for f, a in forced_by_family.items()}}
  (run / "eval" / "warmup" / "toy.summary.json").write_text(json.dumps(summary))
  return str(run)


@pytest.mark.parametrize("native, asked, forced, missed", [
    # 100 queries per family: 1% everywhere, asked 0.99, forced 0.9: every bar met.
    ([0.01] * 200, [0.99] * 200, {"add": 0.9, "mul": 0.9}, []),
    # mean 1.9% but 15% of the queries at 10%: the p90 bar (rare on nearly every query).
    ([0.0035] * 170 + [0.1] * 30, [0.99] * 200, {"add": 0.9, "mul": 0.9}, ["p90"]),
    # mean just over 2%.
    ([0.0201] * 200, [0.99] * 200, {"add": 0.9, "mul": 0.9}, ["mean"]),
    # the copy failed on one family: overall forced 0.75.
    ([0.01] * 200, [0.99] * 200, {"add": 1.0, "mul": 0.5}, ["forced-code"]),
    # the asked demos did not take.
    ([0.01] * 200, [0.5] * 200, {"add": 0.9, "mul": 0.9}, ["asked"]),
])
def test_rare_code_bars_judge_each_bar(tmp_path, native, asked, forced, missed):
  from aci_jax.eval import rare_code_bars

  run = _fake_run(tmp_path, forced)
  rates = rare_code_bars.CodeRates(families=("add",) * 100 + ("mul",) * 100,
                                   native=np.asarray(native, np.float64),
                                   asked=np.asarray(asked, np.float64))
  lines, misses = rare_code_bars.judge(run, rates)
  assert len(misses) == len(missed), misses
  for m, word in zip(misses, missed):
    assert word in m, (m, word)
  # one row per family and one over all, in the table
  assert sum(line.startswith(("| add ", "| mul ", "| all ")) for line in lines) == 3


def test_rare_code_bars_show_where_the_cells_are_right(tmp_path):
  # The diagnostic columns: cells right after the asked prompt, wrong after the forced prefix on
  # half of `mul` (the skill tied to the trigger); they are not a bar.
  from aci_jax.eval import rare_code_bars

  run = _fake_run(tmp_path, {"add": 0.9, "mul": 0.9})
  rates = rare_code_bars.CodeRates(
      families=("add",) * 4 + ("mul",) * 4, native=np.full(8, 0.01), asked=np.full(8, 0.99),
      cell_asked=np.ones(8, bool), cell_forced=np.array([1, 1, 1, 1, 1, 0, 1, 0], bool))
  lines, misses = rare_code_bars.judge(run, rates)
  assert not misses
  row = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
  assert row["add"].endswith("| 1.00 / 1.00 |") and row["mul"].endswith("| 1.00 / 0.50 |")
  assert row["all"].endswith("| 1.00 / 0.75 |")


@pytest.mark.parametrize("forced, overall, missed", [
    # compare_len's habit is wrong on half its problems: the bar reads the other families'
    # forced accuracy (100 add at 0.9, 300 mul at 0.8: 0.825), not the overall 0.74.
    ({"add": 0.9, "mul": 0.8, "compare_len": 0.5}, 0.74, False),
    # mul's cells fail: 100 x 0.9 + 300 x 0.7 over 400 = 0.75 < 0.8 whatever compare_len does.
    ({"add": 0.9, "mul": 0.7, "compare_len": 1.0}, 0.8, True),
])
def test_rare_code_bars_leave_error_prone_code_out_of_the_can_code_bar(tmp_path, forced,
                                                                       overall, missed):
  from aci_jax.eval import rare_code_bars

  run = _fake_run(tmp_path, forced)
  summary = json.loads((tmp_path / "run" / "eval" / "warmup" / "toy.summary.json").read_text())
  summary["selection"]["forced_code_accuracy"] = overall
  (tmp_path / "run" / "eval" / "warmup" / "toy.summary.json").write_text(json.dumps(summary))
  fams = ("add",) * 100 + ("mul",) * 300 + ("compare_len",) * 100
  rates = rare_code_bars.CodeRates(families=fams, native=np.full(500, 0.01),
                                   asked=np.full(500, 0.99))
  lines, misses = rare_code_bars.judge(run, rates)
  assert [("forced-code accuracy (all but compare_len)" in m) for m in misses] == (
      [True] if missed else [])
  row = [line for line in lines if line.startswith("| all but compare_len |")]
  assert len(row) == 1
  expected = (100 * forced["add"] + 300 * forced["mul"]) / 400
  assert f"| {expected:.2f} |" in row[0]
