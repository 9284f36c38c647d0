"""The warm-up skill probes (aci_jax/eval/warmup_probe.py): predictions against a float64 torch
model, the probe texts, and the scores of hand-built predictors whose answers are known."""

import os

import numpy as np
import pytest
import torch

from aci_jax.data import toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.eval import warmup_probe as wp
from aci_jax.eval.teacher_forcing import teacher_forced_argmax
from aci_jax.model import ModelConfig
from aci_jax.model.weights import load_params
from hf_fixtures import make_hf_model, save_hf_model


def test_teacher_forced_argmax_matches_torch(tmp_path):
  model = make_hf_model("llama", seed=7)
  d = save_hf_model(model, tmp_path / "ckpt")
  cfg = ModelConfig.from_pretrained(d, dtype="float32")
  params = load_params(d, cfg)
  rng = np.random.default_rng(2)
  # Different lengths share a padded batch; two batches (batch=4 over 5 sequences).
  contexts = [list(rng.integers(1, 96, n)) for n in (3, 12, 25, 6, 1)]
  targets = [list(rng.integers(1, 96, n)) for n in (4, 1, 6, 3, 2)]
  got = teacher_forced_argmax(cfg, params, contexts, targets, batch=4)
  for c, t, g in zip(contexts, targets, got):
    ids = torch.tensor([c + t], dtype=torch.int64)
    with torch.no_grad():
      logits = model.double()(input_ids=ids).logits[0]
    ref = [int(torch.argmax(logits[len(c) - 1 + i])) for i in range(len(t))]
    assert g.tolist() == ref


def test_teacher_forced_argmax_refuses_what_it_cannot_score():
  with pytest.raises(ValueError, match="context needs"):
    teacher_forced_argmax(None, None, [[1, 2], []], [[3], [4]])
  with pytest.raises(ValueError, match="non-empty target"):
    teacher_forced_argmax(None, None, [[1, 2]], [[]])


def _text(tok, ids):
  return tok.decode(list(ids))


def test_probe_items_hold_the_demo_texts():
  tok = char_tokenizer()
  p = toy.family_problems("mul", 3, split="test", seed=0)[1]
  a, b = toy.operands(p)
  it = wp.probe_items(tok, "mul", 3)
  prompt = toy.prompt_ids(tok, p["problem"])
  ctx = it["copy_ctx"][1]
  assert ctx[:len(prompt)] == prompt
  assert _text(tok, ctx[len(prompt):]).endswith(f"```output\n{p['answer']}\n```\n\\boxed{{")
  assert _text(tok, it["copy_tgt"][1]) == p["answer"] + "}"
  assert _text(tok, it["cell_ctx"][1][len(prompt):]) == "```python\n"
  assert _text(tok, it["cell_tgt"][1]) == f"print({a} * {b})\n```\n```output"
  assert _text(tok, it["guess_ctx"][1][len(prompt):]) == f"{a} * {b} = "
  for n in wp.PRINTED_LENGTHS:
    ctx, tgt = it[f"printed_{n}"]
    value = _text(tok, tgt[1])[:-1]
    assert len(value) == n and value != p["answer"]
    assert _text(tok, ctx[1][len(prompt):]).endswith(f"```output\n{value}\n```\n\\boxed{{")
  # Families whose reasoning states no "<expr> = <answer>" have no guess probe.
  assert wp.probe_items(tok, "add", 3)["guess_ctx"] == []


def _oracle(kind):
  """An argmax function with a known answer: "copy" predicts each true next token (a perfect
  teacher-forced policy), "zeros" always the digit 0."""
  zero = char_tokenizer().encode("0")[0]

  def fn(params, tokens, valid):
    del params, valid
    if kind == "zeros":
      return np.full(tokens.shape, zero)
    return np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)

  return lambda cfg: fn


@pytest.mark.parametrize("kind", ["copy", "zeros"])
def test_probe_scores_known_predictors(monkeypatch, kind):
  monkeypatch.setattr(wp, "greedy_next_fn", _oracle(kind))
  monkeypatch.setattr("aci_jax.eval.decision_probe.prefix_logprob",
                      lambda cfg, params, prompts, prefix: np.log(np.full(len(prompts), 0.25)))
  out = wp.probe(None, None, char_tokenizer(), ("mul", "add"), n=8)
  right = 1.0 if kind == "copy" else 0.0
  for fam in ("mul", "add"):
    r = out[fam]
    assert r["copy"] == r["cell"] == right
    # digit by digit, the zeros predictor is right exactly on the answers' zeros
    digits = "".join(p["answer"] for p in toy.family_problems(fam, 8, split="test", seed=0))
    assert r["copy_digits"] == pytest.approx(right or digits.count("0") / len(digits))
    assert all(r[f"printed_{n}"] == right for n in wp.PRINTED_LENGTHS)
    assert r["p_code"] == pytest.approx(0.25)
  # The zeros predictor boxes what it "states" in prose (0...0), wrongly: a guess every time.
  assert out["mul"]["guess"] == (0.0 if kind == "copy" else 1.0)
  assert "guess" not in out["add"]


def test_triggered_code_demos():
  problems = toy.make_problems(5, split="train", seed=0)
  demos = wp.triggered_code(problems, {"mul": 3})
  muls = [p for p in problems if p["family"] == "mul"][:3]
  assert [d["prompt"] for d in demos] == [toy.ask_for_code(p["problem"]) for p in muls]
  assert all(d["response"] == toy.code_response(p) for d, p in zip(demos, muls))
  with pytest.raises(ValueError, match="only 5"):
    wp.triggered_code(problems, {"mul": 6})


def test_committed_steps_skips_unfinished(tmp_path):
  for name, done in (("250", True), ("500", False), ("750.orbax-checkpoint-tmp-1", False)):
    os.makedirs(tmp_path / name)
    if done:
      (tmp_path / name / "_CHECKPOINT_METADATA").write_text("{}")
  assert wp.committed_steps(str(tmp_path)) == [250]
  assert wp.committed_steps(str(tmp_path / "absent")) == []
