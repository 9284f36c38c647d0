"""The KV cache: decoding step by step and splicing ragged chunks give the full-forward logits."""

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import Decoder, KVCache, positions_from_valid
from cache_fixtures import CFG, full_logits as _full, params as _params






@jax.jit
def _step(params, tokens, positions, cache, valid, advance):
  return Decoder(CFG).apply({"params": params}, tokens, positions, cache, valid, advance)


def test_token_by_token_equals_full_forward():
  params = _params()
  rng = np.random.default_rng(0)
  b, t = 3, 20
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, t)), jnp.int32)
  full = np.asarray(_full(params, tokens, jnp.ones((b, t), bool)))
  cache = KVCache.init(CFG, b, 32)
  # Prefill 5 tokens, then one token at a time.
  logits, cache = _step(params, tokens[:, :5], jnp.broadcast_to(jnp.arange(5), (b, 5)), cache,
                        jnp.ones((b, 5), bool), None)
  out = [np.asarray(logits)]
  for i in range(5, t):
    logits, cache = _step(params, tokens[:, i:i + 1], jnp.full((b, 1), i), cache,
                          jnp.ones((b, 1), bool), None)
    out.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(out, 1), full, atol=1e-5, rtol=0)
  assert np.all(np.asarray(cache.cursor) == t)


def test_ragged_extend_with_holes_equals_full_forward():
  """Left-padded prefill, then chunks of a different real length per row (right-padded within
  the chunk, cursor advanced by the real length, or left as holes), with rows that sit out a
  step entirely (paused): the final logits equal one forward pass over each row's real tokens."""
  params = _params(1)
  rng = np.random.default_rng(1)
  b, cap = 4, 64
  seqs = [list(rng.integers(0, CFG.vocab_size, n)) for n in (5, 9, 2, 7)]  # prompts
  width = max(map(len, seqs))
  toks = np.zeros((b, width), np.int32)
  valid = np.zeros((b, width), bool)
  for r, s in enumerate(seqs):
    toks[r, width - len(s):] = s
    valid[r, width - len(s):] = True
  cache = KVCache.init(CFG, b, cap)
  logits, cache = _step(params, jnp.asarray(toks), positions_from_valid(jnp.asarray(valid)),
                        cache, jnp.asarray(valid), None)
  last = {r: np.asarray(logits)[r, -1] for r in range(b)}
  # Three splice rounds; lengths per row (0 = paused this round). Odd rounds advance by the
  # real length (padding slots reused), even rounds leave the padding as holes.
  rounds = [[3, 0, 6, 1], [0, 4, 2, 5], [2, 2, 0, 3]]
  for k, lengths in enumerate(rounds):
    width = max(lengths)
    chunk = np.zeros((b, width), np.int32)
    cvalid = np.zeros((b, width), bool)
    for r, n in enumerate(lengths):
      new = list(rng.integers(0, CFG.vocab_size, n))
      chunk[r, :n] = new
      cvalid[r, :n] = True
      seqs[r] = seqs[r] + new
    start = jnp.asarray([len(s) - n for s, n in zip(seqs, lengths)], jnp.int32)
    positions = positions_from_valid(jnp.asarray(cvalid), start)
    advance = jnp.asarray(lengths, jnp.int32) if k % 2 == 0 else None
    logits, cache = _step(params, jnp.asarray(chunk), positions, cache, jnp.asarray(cvalid),
                          advance)
    for r, n in enumerate(lengths):
      if n:
        last[r] = np.asarray(logits)[r, n - 1]
  # Reference: each row's real tokens alone, one full forward.
  for r, s in enumerate(seqs):
    ref = np.asarray(_full(params, jnp.asarray([s], jnp.int32), jnp.ones((1, len(s)), bool)))
    np.testing.assert_allclose(last[r], ref[0, -1], atol=1e-5, rtol=0)
  # Holes really are invalid slots; the advanced rows reused their padding slots.
  assert int(np.asarray(cache.valid).sum()) == sum(map(len, seqs))


def test_writes_beyond_capacity_never_overwrite_earlier_slots():
  params = _params()
  cache = KVCache.init(CFG, 1, 4)
  tokens = jnp.asarray([[1, 2, 3]], jnp.int32)
  _, cache = _step(params, tokens, jnp.asarray([[0, 1, 2]]), cache, jnp.ones((1, 3), bool), None)
  k_before = np.asarray(cache.k)
  _, cache = _step(params, tokens, jnp.asarray([[3, 4, 5]]), cache, jnp.ones((1, 3), bool), None)
  np.testing.assert_array_equal(np.asarray(cache.k)[:, :, :3], k_before[:, :, :3])
  assert np.asarray(cache.valid).sum() == 4  # only one of the three new tokens fit


def test_model_is_pure_under_jit():
  """Same inputs, same outputs; the input cache is not mutated (no hidden state)."""
  params = _params()
  cache = KVCache.init(CFG, 2, 8)
  tokens = jnp.asarray([[5, 6], [7, 8]], jnp.int32)
  pos = jnp.asarray([[0, 1], [0, 1]])
  a, c1 = _step(params, tokens, pos, cache, jnp.ones((2, 2), bool), None)
  b, c2 = _step(params, tokens, pos, cache, jnp.ones((2, 2), bool), None)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.asarray(cache.valid).any()
  np.testing.assert_array_equal(np.asarray(c1.k), np.asarray(c2.k))
