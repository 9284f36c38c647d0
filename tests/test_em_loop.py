"""One EM iteration end to end on a handful of queries: rollouts (native + forced), grading,
curation, M-step on the production trainer; and the baselines' data paths."""

import os
import runpy

import numpy as np
import pytest

from aci_jax.em.estep import CODE, decision_of
from aci_jax.em.loop import EMConfig, EMLoop, Problem
from aci_jax.rollout import RolloutConfig, RolloutEngine
from aci_jax.rollout.trajectory import SRC_ENV
from aci_jax.sampling import SamplingParams
from scripted_model import QUESTIONS, train_scripted_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from aci_jax.grading import Grader
  from aci_jax.sandbox import Sandbox

  tmp = tmp_path_factory.mktemp("em")
  tok, cfg, _, scripts, model_dir = train_scripted_model(tmp)
  tok.hf.save_pretrained(model_dir)
  with Sandbox(timeout_s=5.0) as sb, Grader(num_workers=1) as grader:
    yield tok, cfg, model_dir, sb, grader, tmp


def _trainer(model_dir, workdir, policy="ppo_clip", decision_coef=0.5, batch_size=8):
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.runner import Trainer

  c = runpy.run_path(os.path.join(ROOT, "configs", "sft_toy.py"))["get_config"]()
  c.unlock()
  c.model.init, c.model.path, c.tokenizer = "hf", model_dir, model_dir
  c.train.batch_size = batch_size
  c.optim.lr, c.optim.warmup_steps = 1e-3, 0
  c.checkpoint.async_save = False
  c.mesh.data = 8
  tr = Trainer(c, str(workdir), loss_cfg=LossConfig(policy=policy, decision_coef=decision_coef))
  tr.restore_or_init()
  return tr


def _engine(cfg, tok, sb, temperature, max_prompt_tokens=48):
  return RolloutEngine(cfg, tok, RolloutConfig(batch_size=8, max_prompt_tokens=max_prompt_tokens,
                                               max_new_tokens=80,
                                               sampling=SamplingParams(temperature=temperature)),
                       executor=sb)


def _problems():
  return [Problem(q, a) for q, (_, _, a) in QUESTIONS.items()]


def test_one_autocode_iteration(setup):
  tok, cfg, model_dir, sb, grader, tmp = setup
  tr = _trainer(model_dir, tmp / "run_autocode")
  engine = _engine(cfg, tok, sb, temperature=0.5)
  em = EMConfig(algorithm="autocode", iterations=1, queries_per_iteration=3, native_samples=2,
                k_per_decision=2, keep_per_query=2, alpha=float("inf"), pi_prior=1.0, epochs=4)
  loop = EMLoop(em, tr, engine, grader, tok, _problems(),
                lambda q: tok.chat_ids([{"role": "user", "content": q}]), seed=0)
  stats = loop.run_iteration()
  trajs = stats["trajectories"]
  assert len(trajs) == 3 * (2 + 2 + 2)
  modes = [t.mode for t in trajs]
  assert modes.count("cot") == modes.count("code") == 6 and modes.count("native") == 6
  # Banned from code and fence, no rollout runs a cell; forced code rollouts all do.
  assert all(not t.cells for t in trajs if t.mode == "cot")
  assert all(t.cells for t in trajs if t.mode == "code")
  # Q_hat is the mean reward per forced mode; the scripted model does better with code.
  q_code = np.mean([t.reward for t in trajs if t.mode == "code"])
  q_cot = np.mean([t.reward for t in trajs if t.mode == "cot"])
  assert stats["estep/q_code_mean"] == pytest.approx(q_code) and q_code > q_cot
  assert stats["estep/queries"] == 3
  kept_queries = 3 - stats["estep/dropped"]
  assert kept_queries >= 2
  assert stats["estep/kept_rollouts"] == 2 * kept_queries
  # M-step: ceil(kept / 8) mini-batches per epoch, 4 epochs; the loss went down.
  assert stats["em/mstep_steps"] == 4 * -(-stats["estep/kept_rollouts"] // 8)
  assert stats["em/loss_last"] < stats["em/loss_first"]
  assert tr.meta["em_iteration"] == 1 and tr.meta["data_cursor"] == 3
  # Masks and behaviour log-probs are what the batch builder uses.
  code = [t for t in trajs if t.mode == "code"][0]
  assert any(s == SRC_ENV for s in code.source) and len(code.logp) == len(code.response_ids)
  assert all(decision_of(t) == CODE for t in trajs if t.mode == "code")
  # A checkpoint with the EM state exists and restores.
  tr.ckpt.wait()
  tr2 = _trainer(model_dir, tmp / "run_autocode")
  assert tr2.meta["em_iteration"] == 1 and tr2.step == tr.step
  tr.close()
  tr2.close()


@pytest.mark.parametrize("algorithm, policy", [("grpo", "grpo"), ("rejection_sft", "sft_nll")])
def test_baselines_use_native_rollouts_only(setup, algorithm, policy):
  tok, cfg, model_dir, sb, grader, tmp = setup
  tr = _trainer(model_dir, tmp / f"run_{algorithm}", policy=policy, decision_coef=0.0)
  engine = _engine(cfg, tok, sb, temperature=1.5)
  em = EMConfig(algorithm=algorithm, iterations=1, queries_per_iteration=2, native_samples=2,
                k_per_decision=1, epochs=1)
  loop = EMLoop(em, tr, engine, grader, tok, _problems(),
                lambda q: tok.chat_ids([{"role": "user", "content": q}]), seed=1)
  reqs = loop.requests([0, 1], 0)
  assert [r.mode for r in reqs] == ["native"] * 8  # 2 + 2 * 1 rollouts per query, same budget
  stats = loop.run_iteration()
  trajs = stats["trajectories"]
  assert all(t.mode == "native" for t in trajs) and len(trajs) == 8
  kept = stats["estep/kept_rollouts"]
  if algorithm == "rejection_sft":
    assert kept == sum(t.reward > 0 for t in trajs)
  else:  # grpo keeps only the queries whose rewards differ
    by_q = {}
    for t in trajs:
      by_q.setdefault(t.prompt_index, set()).add(t.reward)
    assert kept == 4 * sum(len(v) > 1 for v in by_q.values())
  assert np.isfinite(stats.get("em/loss_last", 0.0))
  tr.close()


def test_forced_code_by_instruction_trains_under_the_unasked_prompt(setup):
  """em.ask_for_code: forced code rollouts are sampled from the asking prompt, put under the
  un-asked one, and the M-step sees their behaviour log-probs re-scored there, checked against
  the Hugging Face model in float64 (the policy has not moved when they are re-scored)."""
  import torch
  from transformers import AutoModelForCausalLM

  tok, cfg, model_dir, sb, grader, tmp = setup
  tr = _trainer(model_dir, tmp / "run_asked")
  engine = _engine(cfg, tok, sb, temperature=0.5, max_prompt_tokens=64)
  em = EMConfig(algorithm="autocode", iterations=1, queries_per_iteration=3, native_samples=1,
                k_per_decision=2, keep_per_query=2, alpha=float("inf"), pi_prior=1.0, epochs=1,
                ask_for_code="Use Python. ")
  prompt = lambda q: tok.chat_ids([{"role": "user", "content": q}])
  problems = _problems()
  loop = EMLoop(em, tr, engine, grader, tok, problems, prompt, seed=0)
  reqs = loop.requests([0], 0)
  for r in reqs:
    asked = r.mode == "code"
    assert r.prompt_ids == prompt(("Use Python. " if asked else "") + problems[0].problem)
    assert r.meta.get("asked", False) == asked

  sampled = {}  # id -> the log-probs recorded under the asking prompt, before re-scoring
  rescore = loop.rescore_asked

  def keep_sampled(trajs):
    sampled.update({id(t): t.logp.array.copy() for t in trajs})
    return rescore(trajs)

  loop.rescore_asked = keep_sampled
  seen = []
  step = tr.train_step
  tr.train_step = lambda b: (seen.append({k: np.array(v) for k, v in b.items()}), step(b))[1]
  stats = loop.run_iteration()
  trajs = stats["trajectories"]
  assert all(list(t.prompt_ids) == prompt(problems[t.prompt_index].problem) for t in trajs)
  assert sum(t.meta.get("asked", False) for t in trajs) == 3 * 2
  assert stats["em/asked_kept"] > 0 and seen

  hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float64).eval()
  by_tokens = {tuple(t.prompt_ids) + tuple(t.response_ids): t for t in trajs}
  asked_rows = 0
  for b in seen:
    for i in range(len(b["tokens"])):
      n = int(b["valid"][i].sum())
      if n == 0:
        continue
      t = by_tokens[tuple(b["tokens"][i, :n].tolist())]
      p = len(t.prompt_ids)
      got = b["behaviour_logp"][i, p:n]
      if not t.meta.get("asked"):  # recorded at sampling time, untouched
        np.testing.assert_array_equal(got, sampled[id(t)])
        continue
      asked_rows += 1
      with torch.no_grad():
        logits = hf(torch.tensor([b["tokens"][i, :n].tolist()])).logits[0]
      ref = torch.log_softmax(logits[p - 1:n - 1], -1).gather(
          1, torch.tensor(b["tokens"][i, p:n].tolist())[:, None])[:, 0].numpy()
      mask = b["loss_mask"][i, p:n] > 0
      # float32 forward of a 2-layer model against float64: ~1e-6; 1e-4 leaves room.
      np.testing.assert_allclose(got[mask], ref[mask], atol=1e-4)
      # Under the asking prompt the cell's tokens were likelier: the old log-probs differ.
      assert not np.allclose(sampled[id(t)][mask], ref[mask], atol=1e-3)
  assert asked_rows == stats["em/asked_kept"]
  tr.close()
