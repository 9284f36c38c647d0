"""Attention over the cache reads only the live key blocks (`aci_jax.model.live_attention`):
small blocks (several per row, a last block that does not divide the cache) give the
full-forward logits, and slots past the longest row are never read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import Decoder, KVCache, positions_from_valid
from aci_jax.model.attention import dense_attention
from aci_jax.model.live_attention import cached_attention, chunk_block
from cache_fixtures import CFG, full_logits as _full, params as _params






@pytest.mark.parametrize("live_block,capacity", [(4, 32), (5, 27), (64, 27)])
def test_ragged_prefill_then_decode_equals_full_forward(live_block, capacity):
  """Rows of different lengths (left padding as holes), prefilled in one chunk, then decoded a
  token at a time across several key blocks: the logits equal one full forward per row."""
  step = jax.jit(lambda p, tok, pos, c, v: Decoder(CFG, live_block=live_block).apply(
      {"params": p}, tok, pos, c, v))
  params = _params(2)
  rng = np.random.default_rng(2)
  b, t = 3, 20
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, t)), jnp.int32)
  lead = np.array([0, 3, 6])  # row r's first `lead[r]` prompt tokens are padding
  valid = np.arange(t)[None, :] >= lead[:, None]
  full = np.asarray(_full(params, tokens, jnp.asarray(valid)))
  cache = KVCache.init(CFG, b, capacity)
  pre = 7
  pos = positions_from_valid(jnp.asarray(valid[:, :pre]))
  logits, cache = step(params, tokens[:, :pre], pos, cache, jnp.asarray(valid[:, :pre]))
  out = [np.asarray(logits)]
  for i in range(pre, t):
    pos = jnp.asarray((i - lead)[:, None], jnp.int32)
    logits, cache = step(params, tokens[:, i:i + 1], pos, cache, jnp.ones((b, 1), bool))
    out.append(np.asarray(logits))
  got = np.concatenate(out, 1)
  np.testing.assert_allclose(got[valid], full[valid], atol=1e-5, rtol=0)


def test_slots_past_the_longest_row_are_never_read():
  """NaN keys and values beyond the live blocks would poison the output if any were read; the
  result equals dense attention over the live slots alone."""
  rng = np.random.default_rng(3)
  l, b, s, kh, h, dh, block = 2, 3, 24, 2, 4, 8, 4
  cursor = np.array([5, 9, 2])  # longest row: 9 slots, + 1 new token -> 10 -> 3 blocks of 4
  k = rng.normal(size=(l, b, s, kh, dh)).astype(np.float32)
  v = rng.normal(size=(l, b, s, kh, dh)).astype(np.float32)
  n = 3
  k[:, :, n * block:] = np.nan
  v[:, :, n * block:] = np.nan
  key_valid = np.arange(s)[None, :] <= cursor[:, None]
  q = rng.normal(size=(b, 1, h, dh)).astype(np.float32)
  q_slot = cursor[:, None].astype(np.int32)
  layer = 1
  got = cached_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.int32(layer),
                         jnp.asarray(q_slot), jnp.asarray(key_valid), block=block)
  live = n * block
  want = dense_attention(jnp.asarray(q), jnp.asarray(k[layer, :, :live]),
                         jnp.asarray(v[layer, :, :live]), jnp.asarray(q_slot),
                         jnp.asarray(key_valid[:, :live]))
  assert np.isfinite(np.asarray(got)).all()
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


def test_chunk_over_a_ragged_prefix_equals_dense_attention():
  """A chunk of several queries per row after prefixes of different lengths, blocks that do
  not divide the cache: equal to dense attention over the whole layer; long chunks take
  smaller key blocks so their scores stay small."""
  rng = np.random.default_rng(4)
  b, s, kh, h, dh, t = 2, 40, 2, 4, 8, 13
  k = jnp.asarray(rng.normal(size=(2, b, s, kh, dh)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, b, s, kh, dh)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32)
  cursor = jnp.asarray([3, 11])
  q_slot = cursor[:, None] + jnp.arange(t)[None, :]
  key_valid = (jnp.arange(s)[None, :] < (cursor + t)[:, None]) & (jnp.arange(s) != 1)
  got = cached_attention(q, k, v, 1, q_slot, key_valid, block=12)
  want = dense_attention(q, k[1], v[1], q_slot, key_valid)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
  assert chunk_block(1, 256) == 256 and chunk_block(1024, 256) == 256
  assert chunk_block(4096, 256) == 64 and chunk_block(1 << 20, 256) == 16
