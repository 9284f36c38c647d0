"""Issue 16 item 2 at a small, fast scale: the rare-code regime's warm-up (configs/default.py:
rare_code: every problem also has a demo that *asks* for code, and only epsilon = 1% of the
un-asked demos code) gives a policy that *can* code but seldom *chooses* to.

Measured on the warm-up policy of a shrunken rare_code run (the production `autocode` mode with
em.iterations = 0, so the run is warm-up + evaluation):
- native code rate: the exact probability, at the E-step's sampling temperature, that an
  un-asked held-out prompt's response opens a cell (`decision_probe.prefix_logprob`, one
  forward per prompt): <= 2% on average over the queries, the issue's bar;
- forced-code accuracy: the evaluation's forced code-mode rollouts (greedy, real sandbox) on
  held-out problems: >= 0.8;
- and, as the control that the asked demos did their job, the same prompts *with* the trigger
  open a cell with probability >= 0.9.
The measurements behind this scale, and the full five-family variant's status, are in docs/em.md
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
# problems (each with its un-asked and its asked demo). Measured 2026-12-04, seeds 0-3 (the test
# runs seed 0): native P(code) mean 1.2% / 0.7% / 1.7% / 1.2%, forced-code accuracy 1.00 / 1.00 /
# 1.00 / 0.98, asked P(code) 1.00 on all. Why this scale: at 16 demos over 1,000 problems
# forced-code accuracy ran from 0.60 to 1.00 across seeds and
# environments (this test's earlier setting passed at 1.00, then read 0.60 with a rebuilt
# venv and the same code): cells were right but \boxed{} often held the printed value + 1, as
# if the policy recomputed the sum instead of copying it. 1,500 steps did not help
# (seed 1: 0.66 -> 0.68); 4,000 problems did (0.84-0.96) but pushed one seed's native P(code) to
# 2.5%. docs/em.md, "The rare-code regime", has the table.
FAMILIES = ("add",)
SMALL = ["--config.em.iterations=0", "--config.progress=False",
         f"--config.task.families={FAMILIES!r}", "--config.task.train_per_family=2000",
         "--config.task.warmup_examples=2000", "--config.task.eval_per_family=50",
         "--config.warmup.steps=1000", "--config.warmup.batch_size=32"]


@pytest.mark.run_first  # minutes on one worker
def test_rare_code_warmup_can_code_but_seldom_chooses_to(tmp_path):
  from aci_jax import tool_format
  from aci_jax.data import toy
  from aci_jax.data.char_tokenizer import char_tokenizer
  from aci_jax.eval.decision_probe import prefix_logprob
  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params

  work = tmp_path / "rare"
  run = subprocess.run(
      [sys.executable, "-m", "aci_jax.main", "--config",
       os.path.join(ROOT, "configs", "default.py") + ":rare_code", "--workdir", str(work),
       *SMALL], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
      timeout=2400)  # ~950 s on a 2-core VM next to another run
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.loads((work / "eval" / "warmup" / "toy.summary.json").read_text())
  config = json.loads((work / "config.json").read_text())
  assert config["task"]["code_fraction"] == 0.01  # the variant's epsilon reached the run
  # Forced into code mode, the policy writes a cell and copies its output.
  forced = summary["selection"]["forced_code_accuracy"]
  assert forced >= 0.8, summary["selection"]
  # Un-asked, it almost never opens a cell: P(code prefix | prompt) at the sampling temperature.
  hf = str(work / "warmup" / "hf")
  cfg = ModelConfig.from_pretrained(hf, dtype="float32")
  params = load_params(hf, cfg)
  tok = char_tokenizer()
  prefix = tok.encode(tool_format.get(config["rollout"]["tool_format"]).code_prefix)
  temperature = config["rollout"]["temperature"]
  problems = [p for f in FAMILIES for p in toy.family_problems(f, 100, split="test", seed=0)]
  prompts = [toy.prompt_ids(tok, p["problem"]) for p in problems]
  p_code = np.exp(prefix_logprob(cfg, params, prompts, prefix, temperature=temperature))
  assert p_code.mean() <= 0.02, (p_code.mean(), p_code.max())
  assert np.quantile(p_code, 0.9) <= 0.05, np.quantile(p_code, 0.9)  # rare on (nearly) every query
  # The asked demos did teach cells: with the trigger the policy opens one.
  asked = [toy.prompt_ids(tok, toy.ask_for_code(p["problem"])) for p in problems]
  p_asked = np.exp(prefix_logprob(cfg, params, asked, prefix, temperature=temperature))
  assert p_asked.mean() >= 0.9, p_asked.mean()
