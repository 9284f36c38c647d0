"""The exact native code rate (aci_jax/eval/decision_probe.py) against a float64 torch model."""

import numpy as np
import pytest
import torch

from aci_jax.eval.decision_probe import prefix_logprob
from aci_jax.model import ModelConfig
from aci_jax.model.weights import load_params
from hf_fixtures import make_hf_model, save_hf_model


def _reference(model, prompt, prefix, temperature):
  """log P(prefix | prompt) from the torch model in float64, one unpadded sequence at a time."""
  ids = torch.tensor([list(prompt) + list(prefix)], dtype=torch.int64)
  with torch.no_grad():
    logits = model(input_ids=ids).logits[0].double()
  logp = torch.log_softmax(logits / temperature, dim=-1)
  return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(prefix))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_prefix_probability_matches_a_float64_reference(tmp_path, temperature):
  model = make_hf_model("qwen2", seed=3)
  d = save_hf_model(model, tmp_path / "ckpt")
  cfg = ModelConfig.from_pretrained(d, dtype="float32")
  params = load_params(d, cfg)
  rng = np.random.default_rng(0)
  # Prompts of different lengths share a padded batch; two batches (batch=4 over 6 prompts).
  prompts = [list(rng.integers(1, 96, n)) for n in (3, 9, 17, 5, 30, 1)]
  prefix = [7, 41, 2]
  got = prefix_logprob(cfg, params, prompts, prefix, temperature=temperature, batch=4)
  ref = np.asarray([_reference(model.double(), p, prefix, temperature) for p in prompts])
  # Three float32 log-softmax terms; the float32 parity of the logits themselves is 1e-4
  # (tests/test_model_parity.py), and a log-prob moves by at most twice its logits' error.
  np.testing.assert_allclose(got, ref, atol=6e-4, rtol=0)
  # The figure moves with the prefix (a wrong gather would not notice a changed token).
  other = prefix_logprob(cfg, params, prompts, [7, 41, 3], temperature=temperature, batch=4)
  assert np.all(np.abs(other - got) > 1e-3)


def test_bad_arguments_are_errors():
  cfg = ModelConfig(arch="qwen2", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=4)
  with pytest.raises(ValueError, match="prefix"):
    prefix_logprob(cfg, {}, [[1, 2]], [])
  with pytest.raises(ValueError, match="temperature"):
    prefix_logprob(cfg, {}, [[1, 2]], [3], temperature=0.0)


def test_teacher_forced_match_agrees_with_torch_greedy_generation(tmp_path):
  from aci_jax.eval.teacher_forcing import teacher_forced_match

  model = make_hf_model("llama", seed=5)
  d = save_hf_model(model, tmp_path / "ckpt")
  cfg = ModelConfig.from_pretrained(d, dtype="float32")
  params = load_params(d, cfg)
  rng = np.random.default_rng(1)
  contexts = [list(rng.integers(1, 96, n)) for n in (4, 11, 23, 7, 2)]
  greedy = []
  for c in contexts:  # the reference: torch's own greedy continuation, 4 tokens, float64
    ids = torch.tensor([c], dtype=torch.int64)
    out = model.double().generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)
    greedy.append([int(t) for t in out[0, len(c):]])
  # Greedy targets match; a target whose 3rd token differs does not (teacher forcing means
  # the first two positions still agree, so only the changed position can make it fail).
  wrong = [g[:2] + [(g[2] + 1) % 96] + g[3:] for g in greedy]
  got = teacher_forced_match(cfg, params, contexts + contexts, greedy + wrong, batch=4)
  assert got.tolist() == [True] * 5 + [False] * 5
