"""The sampling copy's fused projections (aci_jax.model.fused) and the sampler's first-argmax:
the same model and the same draws as the separate projections and `jax.random.categorical`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import KVCache, ModelConfig, init_params
from aci_jax.model import fused
from aci_jax.model.decoder import Decoder, unstack_layers
from aci_jax.sampling import SamplingParams, sample_tokens
from aci_jax.sampling.sampler import first_argmax


def _cfg(**kw):
  base = dict(arch="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
              num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, mlp_bias=True,
              tie_word_embeddings=False, max_position_embeddings=64, rope_theta=1e4)
  base.update(kw)
  return ModelConfig(**base)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("unstack", [False, True])
def test_fused_projections_give_the_same_logits_and_cache(groups, unstack):
  cfg = _cfg()
  params = init_params(cfg, jax.random.key(0))
  tok = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 5)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  outs = []
  for p in (params, fused.fuse(unstack_layers(params) if unstack else params, groups)):
    model = Decoder.for_params(cfg, p)
    cache = KVCache.init(cfg, 2, 16)
    _, cache = model.apply({"params": p}, tok, pos, cache)
    logits, cache = model.apply({"params": p}, tok[:, :1], pos[:, :1] + 5, cache)
    outs.append((np.asarray(logits), np.asarray(cache.k), np.asarray(cache.v)))
  assert Decoder.for_params(cfg, fused.fuse(params, groups)).fused == groups
  for a, b in zip(*outs):  # float32; the fused matmul may sum in another order
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_fuse_groups_hold_each_chips_slice_of_every_part():
  cfg = _cfg(num_layers=1)
  p = init_params(cfg, jax.random.key(0))
  f = fused.fuse(p, 2)["layers"]["attn"]["qkv_proj"]["kernel"]  # [L, D, 2, (32 + 16 + 16) / 2]
  assert f.shape == (1, 32, 2, 32)
  q = p["layers"]["attn"]["q_proj"]["kernel"]
  k = p["layers"]["attn"]["k_proj"]["kernel"]
  np.testing.assert_array_equal(f[:, :, 1, :16], q[:, :, 16:])
  np.testing.assert_array_equal(f[:, :, 1, 16:24], k[:, :, 8:])
  with pytest.raises(ValueError, match="not divisible"):
    fused.fuse(p, 3)


def test_sampling_groups_follow_the_sampling_rules():
  from aci_jax.parallel import MeshConfig, make_mesh
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  assert fused.sampling_groups(_cfg(), mesh) == 8  # 32, 16 and 48 outputs all split 8 ways
  # kv outputs 4 split 4 ways, q outputs 32 split 8 ways: the parts are split differently.
  assert fused.sampling_groups(_cfg(num_kv_heads=1, head_dim=4, num_heads=8), mesh) == 0
  assert fused.sampling_groups(_cfg(), None) == 1


def test_first_argmax_is_argmax_with_ties():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 4, (64, 37)).astype(np.float32)  # many ties
  x[3] = -np.inf
  np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, -1))


def test_sampled_tokens_are_categoricals_draws():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(16, 50)) * 3, jnp.float32)
  keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(16))
  tok, _ = sample_tokens(keys, logits, SamplingParams(temperature=1.0))
  ref = jax.vmap(lambda k, l: jax.random.categorical(jax.random.wrap_key_data(k), l))(keys,
                                                                                      logits)
  np.testing.assert_array_equal(np.asarray(tok), np.asarray(ref))
