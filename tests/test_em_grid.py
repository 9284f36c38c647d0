"""`python -m aci_jax.em.grid`: arms x seeds, the warm-up trained once per seed and shared by the
arms that differ only in `em`, resumable, then `em.compare` over the runs."""

import json
import os
import subprocess
import sys

import pytest

from aci_jax.em import grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.warmup.steps=20", "--config.em.iterations=1",
        "--config.em.queries_per_iteration=4", "--config.task.eval_per_family=2",
        "--config.task.train_per_family=20", "--config.task.warmup_examples=40",
        "--config.rollout.batch_size=16", "--config.model.num_layers=1",
        "--config.progress=False"]


def _grid(out, *args):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "aci_jax.em.grid", "--config",
                         os.path.join(ROOT, "configs", "default.py"), "--out", str(out),
                         *args], capture_output=True, text=True, env=env, timeout=900)


def _files(d):
  return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
          for r, _, fs in os.walk(d) for f in fs}


def test_grid_shares_the_warmup_and_compares(tmp_path):
  out = tmp_path / "grid"
  arms = ["--arm", "em=--config.em.algorithm=autocode",
          "--arm", "rl=--config.em.algorithm=grpo --config.em.k_per_decision=2"]
  r = _grid(out, "--seeds", "3", *arms, "--", *TINY)
  assert r.returncode == 0, r.stderr[-3000:]
  em, rl = out / "em" / "s3", out / "rl" / "s3"
  # The first arm trained the warm-up; the second loaded a copy of its export.
  assert (em / "warmup" / "metrics.jsonl").exists()
  assert not (rl / "warmup" / "metrics.jsonl").exists()
  assert not (rl / "warmup" / "checkpoints").exists()
  assert _files(rl / "warmup" / "hf") == _files(em / "warmup" / "hf")
  s_em = json.loads((em / "summary.json").read_text())
  s_rl = json.loads((rl / "summary.json").read_text())
  assert s_em["algorithm"] == "autocode" and s_rl["algorithm"] == "grpo"
  # Same policy, same greedy evaluation of it.
  assert s_rl["warmup"] == s_em["warmup"]
  assert json.loads((rl / "config.json").read_text())["seed"] == 3
  result = json.loads((out / "compare" / "compare.json").read_text())
  assert set(result["arms"]) == {"em", "rl"}, result["arms"]
  assert "| em |" in r.stdout and "| rl |" in r.stdout
  # Re-running the finished grid trains nothing.
  before = (em / "summary.json").stat().st_mtime_ns, (rl / "summary.json").stat().st_mtime_ns
  again = _grid(out, "--seeds", "3", *arms, "--", *TINY)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("done ") == 2
  assert ((em / "summary.json").stat().st_mtime_ns, (rl / "summary.json").stat().st_mtime_ns
          ) == before


def test_arms_that_change_the_warmup_do_not_share_it(tmp_path):
  lines = []
  arms = [grid.parse_arm("a=--config.em.algorithm=autocode"),
          grid.parse_arm("b=--config.em.algorithm=grpo"),
          grid.parse_arm("e0=--config.task.code_fraction=0"),
          grid.parse_arm("e0g=--config.task.code_fraction=0 --config.em.algorithm=grpo")]
  runs = grid.plan(arms, [1, 2], str(tmp_path))
  grid.run_grid("c.py", runs, [], dry_run=True, echo=lines.append)
  copies = [l.split()[1:] for l in lines if l.startswith("warm-up")]
  j = lambda *p: os.path.join(str(tmp_path), *p, "warmup", "hf")
  assert copies == [[j("a", "s1"), "->", j("b", "s1")], [j("e0", "s1"), "->", j("e0g", "s1")],
                    [j("a", "s2"), "->", j("b", "s2")], [j("e0", "s2"), "->", j("e0g", "s2")]]
  assert sum(l.startswith("run ") for l in lines) == 8


def test_reuse_is_checked_against_the_donor_config(tmp_path):
  donor = grid.Run(grid.parse_arm("a=--config.em.algorithm=autocode"), 1, str(tmp_path / "a"))
  run = grid.Run(grid.parse_arm("b=--config.em.algorithm=grpo"), 1, str(tmp_path / "b"))
  for r, cfg in ((donor, {"seed": 1, "em": {"algorithm": "autocode"}, "task": {"x": 1}}),
                 (run, {"seed": 1, "em": {"algorithm": "grpo"}, "task": {"x": 1}})):
    os.makedirs(r.workdir)
    with open(os.path.join(r.workdir, "config.json"), "w") as f:
      json.dump(cfg, f)
  grid.check_shared_warmup(run, donor)  # differ only in em: fine
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump({"seed": 1, "em": {}, "task": {"x": 2}}, f)
  with pytest.raises(grid.RunFailed, match="differ outside em .in task"):
    grid.check_shared_warmup(run, donor)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1,x"], "expected comma-separated integers"),
    (["--seeds", "1,1"], "expected distinct integers"),
    (["--seeds", "1", "--arm", "a b=--config.em.alpha=1"], "expected NAME="),
    (["--seeds", "1", "--arm", "a=--em.alpha=1"], "is not a --config.key=value override"),
    (["--seeds", "1", "--arm", "a=--config.em.alpha=1", "--arm", "a=--config.em.alpha=2"],
     "arm names repeat"),
    (["--seeds", "1", "--", "--config.seed=4"], "sets --config.seed"),
    (["--seeds", "1", "--", "oops"], "expected --config.key=value overrides"),
    (["--seeds", "1", "--out", "gs://bucket/g"], "must be local"),
])
def test_bad_flags_fail_with_one_line(tmp_path, args, message):
  r = _grid(tmp_path / "g", *args)
  assert r.returncode == 2
  assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
  assert message in r.stderr
  assert not (tmp_path / "g").exists()


def test_a_failed_run_stops_the_grid(tmp_path):
  r = _grid(tmp_path / "g", "--seeds", "1,2", "--", "--config.em.iterations=-1")
  assert r.returncode == 1  # the run's own exit status (2: a bad config value) is in the line
  assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
  assert "autocode/s1: exit status 2" in r.stderr and not (tmp_path / "g" / "em_no_decision").exists()
