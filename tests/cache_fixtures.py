"""The small model the KV-cache tests share (contiguous, live-block and paged caches)."""

import jax

from aci_jax.model import Decoder, ModelConfig, init_params, positions_from_valid

CFG = ModelConfig(arch="qwen2", vocab_size=80, hidden_size=48, intermediate_size=64,
                  num_layers=3, num_heads=6, num_kv_heads=2, head_dim=8, qkv_bias=True,
                  rope_theta=1e4, rms_norm_eps=1e-6)


def params(seed=0):
  p = init_params(CFG, jax.random.key(seed))
  # Weights 3x the 0.02 init: attention is far from uniform and logits have std ~0.4, while
  # the network does not yet amplify float32 rounding chaotically (at 6x, decode-vs-full
  # differences reach 1e-5 from summation order alone).
  return jax.tree_util.tree_map(lambda x: x * 3 if x.ndim >= 2 else x, p)


@jax.jit
def full_logits(p, tokens, valid):
  """Logits of a cache-free forward over the whole sequence (the reference for cached decoding)."""
  return Decoder(CFG).apply({"params": p}, tokens, positions_from_valid(valid), valid=valid)[0]
