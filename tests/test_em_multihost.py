"""Two local processes (2 CPU devices each, gloo collectives) run the `autocode` mode through the
real entry point — evaluation, one E-step with each host rolling out, running the code cells of
and curating its own queries, one M-step on the shared curated set — and agree with one process
on 4 devices: same evaluation trajectories, same E-step statistics, same losses, same weights."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from aci_jax.metrics import read_jsonl
from aci_jax.model.safetensors_io import SafetensorsFile
from scripted_model import QUESTIONS, train_scripted_model
from test_train_multihost import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import runpy
import ml_collections


def get_config():
  c = runpy.run_path({default!r})["get_config"]()
  c.task = ml_collections.ConfigDict(dict(
      name="jsonl", train_path={problems!r}, eval_paths={{"math500": {problems!r}}},
      eval_limit=0))
  c.tokenizer = {model!r}
  c.model.init, c.model.path = "hf", {model!r}
  c.warmup.steps = 0
  # Forced code asked for by instruction: the M-step re-scores those rows on the global batch
  # (Trainer.token_logprobs, all-gathered), which two hosts must do as one.
  c.em.update(iterations=1, queries_per_iteration=3, native_samples=2, k_per_decision=2,
              keep_per_query=2, epochs=2, ask_for_code="Use Python. ",
              code_cost=0.0)  # code kept where it wins at all (the default prices it at 0.5)
  c.rollout.update(batch_size=8, max_prompt_tokens=64, max_new_tokens=80)
  c.train.batch_size = 8
  # Adam divides by sqrt(v) + eps: with eps 1e-8, a weight whose gradient is at rounding level
  # (a token that barely occurs) moves by up to lr on a rounding difference between the two
  # reductions. eps 1e-4 keeps such weights still, so the weights are compared at 1e-6.
  c.optim.update(lr=1e-3, eps=1e-4)
  c.eval.update(every=1, samples=2, temperature=1.0, selection=True)
  c.export.at_end = True
  c.checkpoint.async_save = False
  c.progress = False
  return c
'''


def launch(config, workdir, devices, *extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "aci_jax.main", "--config", str(config), "--workdir",
         str(workdir), *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def cells_per_process(log: str) -> dict[int, int]:
  found = re.findall(r"E-step: process (\d+) of \d+ ran \d+ rollouts and (\d+) code cells", log)
  return {int(p): int(n) for p, n in found}


def eval_records(workdir):
  path = os.path.join(workdir, "eval", "iteration_1", "math500.trajectories.jsonl")
  with open(path) as f:
    recs = [json.loads(line) for line in f]
  return [(r["prompt_index"], r["sample_index"], r["mode"], r["response_ids"],
           [c["output"] for c in r["cells"]], r["reward"]) for r in recs], recs


def read_export(workdir):
  d = os.path.join(workdir, "export")
  (step,) = os.listdir(d)
  f = SafetensorsFile(os.path.join(d, step, "model.safetensors"))
  return {name: np.array(f.get(name)) for name in f.keys()}


@pytest.mark.slow
def test_two_processes_run_em_like_one(tmp_path):
  tok, _, _, _, model_dir = train_scripted_model(tmp_path)
  tok.hf.save_pretrained(model_dir)
  problems = tmp_path / "problems.jsonl"
  problems.write_text("".join(json.dumps({"problem": q, "answer": a}) + "\n"
                              for q, (_, _, a) in QUESTIONS.items()))
  config = tmp_path / "config.py"
  config.write_text(CONFIG.format(default=os.path.join(ROOT, "configs", "default.py"),
                                  problems=str(problems), model=str(model_dir)))

  single = launch(config, tmp_path / "one", 4)
  port = free_port()
  procs = [launch(config, tmp_path / "two", 2, f"--config.dist.coordinator=localhost:{port}",
                  "--config.dist.num_processes=2", f"--config.dist.process_id={i}")
           for i in range(2)]
  out1 = single.communicate(timeout=600)[0]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert single.returncode == 0, out1[-3000:]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]

  # Each host ran the cells of its own queries; together exactly what one process ran.
  one = cells_per_process(out1)
  two = {**cells_per_process(outs[0]), **cells_per_process(outs[1])}
  assert set(two) == {0, 1} and all(n > 0 for n in two.values()), two
  assert sum(two.values()) == one[0] > 0

  s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
  s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
  it1, it2 = s1["iterations"][0], s2["iterations"][0]
  for key, value in it1.items():
    if key.startswith("estep/") or key in ("em/rollouts", "em/cells", "em/mstep_steps",
                                           "em/asked_kept"):
      assert it2[key] == pytest.approx(value, rel=1e-6), key
  assert it1["estep/kept_rollouts"] > 0 and it1["em/mstep_steps"] > 0
  assert it1["em/asked_kept"] > 0
  assert s2["final"] == s1["final"]

  # Evaluation: every trajectory (greedy, sampled, forced) token for token, gathered on host 0.
  r1, raw = eval_records(tmp_path / "one")
  r2, _ = eval_records(tmp_path / "two")
  assert r2 == r1
  assert any(rec["cells"] for rec in raw) and any(rec["reward"] == 1.0 for rec in raw)

  # M-step: same losses at every step, same weights at the end.
  m1 = [r for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if "loss" in r]
  m2 = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "loss" in r]
  assert len(m1) == len(m2) == it1["em/mstep_steps"]
  for a, b in zip(m1, m2):
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")
  w1, w2 = read_export(tmp_path / "one"), read_export(tmp_path / "two")
  assert w1.keys() == w2.keys()
  for name in w1:
    np.testing.assert_allclose(w2[name], w1[name], atol=1e-6, err_msg=name)
  w0 = SafetensorsFile(os.path.join(model_dir, "model.safetensors"))
  moved = any(not np.allclose(np.array(w0.get(n)), w1[n]) for n in w1)
  assert moved  # the M-step really trained (agreement is not about the initial weights)
