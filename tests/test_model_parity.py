"""Float32 logits of our decoder against the Hugging Face PyTorch implementation (atol 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import Decoder, ModelConfig, positions_from_valid
from aci_jax.model.weights import load_params
from hf_fixtures import hf_logits, make_hf_model, save_hf_model

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}

# (arch, overrides): each variant changes something a wrong implementation would get wrong.
VARIANTS = {
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_untied_mha": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4,
                                       rms_norm_eps=1e-5)),
    "qwen2_gqa4_theta1e6": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2,
                                          rope_theta=1e6, rms_norm_eps=1e-6)),
    "llama_gqa2_head_dim": ("llama", dict(head_dim=12, rms_norm_eps=1e-5)),
    "llama3_rope_scaling": ("llama", dict(rope_scaling=LLAMA3, rope_theta=500000.0,
                                          num_key_value_heads=1, rms_norm_eps=1e-6)),
    "llama_bias_mha": ("llama", dict(attention_bias=True, mlp_bias=True, num_key_value_heads=4,
                                     rms_norm_eps=3e-3, tie_word_embeddings=True)),
}


def _load(tmp_path, arch, overrides, **runtime):
  model = make_hf_model(arch, **overrides)
  d = save_hf_model(model, tmp_path / "ckpt")
  cfg = ModelConfig.from_pretrained(d, **runtime)
  return model, cfg, load_params(d, cfg)


def _forward(cfg, params, tokens, valid):
  positions = positions_from_valid(jnp.asarray(valid))
  logits, _ = jax.jit(lambda p, t, pos, v: Decoder(cfg).apply({"params": p}, t, pos, valid=v))(
      params, tokens, positions, valid)
  return np.asarray(logits), np.asarray(positions)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_match_transformers(tmp_path, name):
  arch, overrides = VARIANTS[name]
  model, cfg, params = _load(tmp_path, arch, overrides)
  rng = np.random.default_rng(1)
  # Long enough that llama3 scaling (original context 64) and theta matter.
  tokens = rng.integers(0, cfg.vocab_size, (3, 80)).astype(np.int32)
  valid = np.ones(tokens.shape, bool)
  ours, positions = _forward(cfg, params, tokens, valid)
  ref = hf_logits(model, tokens, valid, positions)
  assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_bias_tied", "llama_gqa2_head_dim", "llama3_rope_scaling"])
def test_left_padded_batch_matches_transformers(tmp_path, name):
  arch, overrides = VARIANTS[name]
  model, cfg, params = _load(tmp_path, arch, overrides)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, cfg.vocab_size, (4, 24)).astype(np.int32)
  valid = np.ones(tokens.shape, bool)
  for row, pad in enumerate([0, 3, 11, 23]):
    valid[row, :pad] = False
  ours, positions = _forward(cfg, params, tokens, valid)
  ref = hf_logits(model, tokens, valid, positions)
  np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)
  # A left-padded row gives the logits of the same tokens unpadded.
  solo, _ = _forward(cfg, params, tokens[2:3, 11:], np.ones((1, 13), bool))
  np.testing.assert_allclose(ours[2, 11:], solo[0], atol=1e-5, rtol=0)


def test_holes_in_a_row_are_ignored(tmp_path):
  """Invalid tokens in the middle of a row (holes) change nothing for the real tokens."""
  _, cfg, params = _load(tmp_path, "qwen2", VARIANTS["qwen2_bias_tied"][1])
  rng = np.random.default_rng(3)
  real = rng.integers(0, cfg.vocab_size, (1, 12)).astype(np.int32)
  holey = np.concatenate([real[:, :5], rng.integers(0, 96, (1, 4)), real[:, 5:]], 1)
  valid = np.ones(holey.shape, bool)
  valid[0, 5:9] = False
  ours, _ = _forward(cfg, params, holey, valid)
  dense, _ = _forward(cfg, params, real, np.ones(real.shape, bool))
  np.testing.assert_allclose(ours[valid], dense.reshape(-1, cfg.vocab_size), atol=1e-5, rtol=0)


def _trained_like(tmp_path, seed=0, vocab=256, steps=0):
  """A Qwen2 model with the shape of a trained LM: large embeddings, small per-layer updates
  (the residual stream dominates), optionally trained with torch for `steps` Adam steps on a
  noisy bigram language so its next-token predictions are confident, as a real LM's are."""
  import torch

  model = make_hf_model("qwen2", seed=seed, num_attention_heads=8, num_key_value_heads=2,
                        num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                        vocab_size=vocab)
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "embed" in n or "lm_head" in n:
        p.copy_(torch.randn_like(p))
      elif "proj" in n and n.endswith("weight"):
        p.copy_(0.05 * torch.randn_like(p))
  rng = np.random.default_rng(seed)
  perm = rng.permutation(vocab)

  def sample(n, length):  # next token = perm[token] with probability 0.8, else uniform
    seq = np.empty((n, length), np.int64)
    seq[:, 0] = rng.integers(0, vocab, n)
    for t in range(1, length):
      follow = rng.random(n) < 0.8
      seq[:, t] = np.where(follow, perm[seq[:, t - 1]], rng.integers(0, vocab, n))
    return seq

  if steps:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
      x = torch.tensor(sample(16, 32))
      loss = model(input_ids=x, labels=x).loss
      opt.zero_grad()
      loss.backward()
      opt.step()
    model.eval()
  d = save_hf_model(model, tmp_path / f"ckpt{seed}")
  return d, sample(16, 64).astype(np.int32)


def _bf16_vs_f32(d, tokens):
  cfg32 = ModelConfig.from_pretrained(d)
  cfg16 = ModelConfig.from_pretrained(d, dtype="bfloat16", param_dtype="bfloat16")
  valid = np.ones(tokens.shape, bool)
  p16 = load_params(d, cfg16)
  assert p16["layers"]["attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
  l32, _ = _forward(cfg32, load_params(d, cfg32), tokens, valid)
  l16, _ = _forward(cfg16, p16, tokens, valid)
  rel = np.abs(l16 - l32).max() / np.abs(l32).max()
  agree = (l16.argmax(-1) == l32.argmax(-1)).mean()
  return rel, agree


def test_bf16_logit_tolerance(tmp_path):
  """bf16 params and compute vs float32 on an untrained model (documented in docs/model.md):
  we measured a max |diff| of 0.7-1.1% of the largest |logit| over seeds; allowed: 2%."""
  for seed in range(2):
    d, tokens = _trained_like(tmp_path, seed=seed)
    rel, agree = _bf16_vs_f32(d, tokens)
    assert 0 < rel <= 0.02, rel
    # Untrained models have many near-ties; both we and HF-bf16 measured about 99% here.
    assert agree >= 0.97, agree


def test_bf16_argmax_agrees_on_trained_model(tmp_path):
  """A trained model's predictions survive bf16: argmax agreement with float32 >= 99%."""
  d, tokens = _trained_like(tmp_path, seed=3, steps=150)
  rel, agree = _bf16_vs_f32(d, tokens)
  assert rel <= 0.02, rel
  assert agree >= 0.99, agree
