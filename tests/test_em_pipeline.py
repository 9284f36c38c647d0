"""The `autocode` mode end to end at toy scale (warm-up, eval, one EM iteration, summary,
plots, resume), and the paper configs' values parse into their dataclasses."""

import json
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.warmup.steps=30", "--config.em.iterations=1",
        "--config.em.queries_per_iteration=4", "--config.task.eval_per_family=2",
        "--config.task.train_per_family=20", "--config.task.warmup_examples=40",
        "--config.rollout.batch_size=16", "--config.model.num_layers=2"]


def _main(workdir, *extra):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "aci_jax.main", "--config",
                         os.path.join(ROOT, "configs", "default.py"), "--workdir", str(workdir),
                         *TINY, *extra], capture_output=True, text=True, env=env, timeout=600)


def test_default_pipeline_tiny(tmp_path):
  run = _main(tmp_path / "run", "--config.progress=False", "--config.data.system=Be brief.")
  assert run.returncode == 0, run.stderr[-3000:]
  # progress=False silences every bar, the rollout engine's too (the E-step's 48 rows would
  # draw one: more than two batches of 16).
  assert "rollouts:" not in run.stderr, run.stderr[-1000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert set(summary) >= {"warmup", "iterations", "final", "wall_seconds"}
  assert len(summary["iterations"]) == 1
  for point in (summary["warmup"], summary["final"]):
    toy = point["toy"]
    assert {"accuracy", "code_rate", "selection_accuracy"} <= set(toy)
    assert set(toy["per_family"]) == {"compare", "add", "mul", "powmod"}
    assert 0.0 <= toy["accuracy"] <= 1.0
  it = summary["iterations"][0]
  assert it["em/rollouts"] == 4 * (4 + 4 + 4)  # queries x (native + 2 K)
  assert (tmp_path / "run" / "plots" / "toy_accuracy.png").exists()
  # Polarisation of the native code rate per query: in the summary and plotted.
  assert 0.0 <= it["estep/native_code_rate_below_05"] <= 1.0
  assert sum(it["estep/native_code_rate_query_hist"]) == 4
  assert (tmp_path / "run" / "plots" / "polarisation.png").exists()
  # data.system frames the evaluation prompts as it framed the warm-up's (char tokenizer:
  # one id per byte).
  rec = json.loads((tmp_path / "run" / "eval" / "warmup" / "toy.trajectories.jsonl")
                   .read_text().splitlines()[0])
  assert bytes(i for i in rec["prompt_ids"] if i < 256).startswith(b"Be brief.")
  assert (tmp_path / "run" / "warmup" / "hf" / "config.json").exists()
  assert (tmp_path / "run" / "eval" / "warmup" / "toy.trajectories.jsonl").exists()
  # 30 steps cannot pass the default's gate: it closes at its cap (30 + 23) and the one retry
  # (warmup.gate_retries=1: its probes are far under gate_retry_below 0.8) trains a second
  # warm-up from other seeds; the better one is used.
  attempts = json.loads((tmp_path / "run" / "warmup" / "attempts.json").read_text())
  assert attempts["retry_below"] == 0.8
  assert [(a["attempt"], a["gate_step"], a["passed"]) for a in attempts["attempts"]] == [
      (0, 53, False), (1, 53, False)]
  assert attempts["chosen"] in (0, 1)
  # The default averages the tail: past step 30 the gate probes the average and logs the
  # parameters' own probes beside (gate_raw/*); at step 30 the two are the same parameters.
  with open(tmp_path / "run" / "warmup" / "metrics.jsonl") as f:
    gated = [json.loads(line) for line in f if '"gate' in line]
  raw = {r["step"]: r for r in gated if "gate_raw/mul:code" in r}
  avg = {r["step"]: r for r in gated if "gate/mul:code" in r}
  assert sorted(raw) == sorted(avg) and 30 in raw and 53 in raw
  assert all(raw[30][f"gate_raw/{k}"] == avg[30][f"gate/{k}"] for k in ("mul:code", "add:reason"))
  assert (tmp_path / "run" / "warmup" / "retry_1" / "export" / "config.json").exists()
  # Re-running the finished command resumes and does nothing new: same summary numbers.
  again = _main(tmp_path / "run", "--config.progress=False", "--config.data.system=Be brief.")
  assert again.returncode == 0, again.stderr[-3000:]
  summary2 = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary2["final"] == summary["final"]
  assert summary2["iterations"] == summary["iterations"]  # incl. timings: not recomputed
  assert "EM iteration" not in again.stderr


def test_bad_em_value_is_one_line(tmp_path):
  run = _main(tmp_path / "bad", "--config.em.algorithm=ppo_magic")
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and "algorithm" in lines[0]


@pytest.mark.parametrize("name", ["default", "paper:qwen2.5-7b", "paper:qwen2.5-math-1.5b",
                                  "paper:deepseek-math-7b"])
def test_config_values_parse(name):
  from aci_jax.em.loop import EMConfig
  from aci_jax.rollout import RolloutConfig
  from aci_jax.sampling import SamplingParams
  from aci_jax.sandbox import SandboxConfig
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.optim import OptimConfig
  from aci_jax.configuration import dataclass_from

  file, _, arg = name.partition(":")
  get = runpy.run_path(os.path.join(ROOT, "configs", f"{file}.py"))["get_config"]
  c = get(arg) if arg else get()
  assert c.mode == "autocode"
  dataclass_from(EMConfig, c.em, name="em")
  r = dict(c.rollout)
  sp = SamplingParams(temperature=r.pop("temperature"), top_p=r.pop("top_p"), top_k=r.pop("top_k"))
  dataclass_from(RolloutConfig, r, name="rollout", sampling=sp)
  dataclass_from(SandboxConfig, c.sandbox, name="sandbox")
  dataclass_from(LossConfig, c.loss, name="loss")
  dataclass_from(OptimConfig, c.optim, name="optim")
  if name != "default":
    assert c.em.k_per_decision == 8 and c.em.queries_per_iteration == 7000
    assert c.loss.clip_eps_low == c.loss.clip_eps_high == 0.2 and c.loss.kl_coef == 0.0
