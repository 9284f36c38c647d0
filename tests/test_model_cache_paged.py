"""The paged KV cache (`aci_jax.model.cache.PagedKVCache`) computes what the contiguous cache
does: pages scattered anywhere in a shared pool, split into groups, read through per-row block
tables, give the contiguous cache's logits (ragged prefill with holes, decode across several
key blocks and pages, rows that stop while others go on); writes past a row's pages are
dropped, never landing on another row's page."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import Decoder, KVCache, PagedKVCache
from aci_jax.model import positions_from_valid
from aci_jax.model.cache import gather_pages, pages_per_row, scatter_pages
from cache_fixtures import CFG, params as _params




def _scattered_table(rng, batch, groups, pages_per_group, per_row, held):
  """[B, M] table: row b holds held[b] pages drawn at random from its group's pool, no page
  twice; the rest unassigned (= pages_per_group)."""
  table = np.full((batch, per_row), pages_per_group, np.int32)
  rows_per_group = batch // groups
  for g in range(groups):
    free = list(rng.permutation(pages_per_group))
    for b in range(g * rows_per_group, (g + 1) * rows_per_group):
      for m in range(held[b]):
        table[b, m] = free.pop()
  return table


@pytest.mark.parametrize("live_block,page,capacity,groups", [
    (4, 2, 32, 1), (8, 4, 27, 2), (64, 4, 27, 3), (6, 3, 30, 1)])
def test_paged_equals_contiguous(live_block, page, capacity, groups):
  """Ragged prefill (left padding: holes) then one token at a time, one row stopping halfway:
  the paged cache's logits equal the contiguous cache's at 1e-5 (float32)."""
  step = jax.jit(lambda p, tok, pos, c, v, adv: Decoder(CFG, live_block=live_block).apply(
      {"params": p}, tok, pos, c, v, adv))
  params = _params(1)
  rng = np.random.default_rng(4)
  b, t, pre = 6, 22, 7
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, t)), jnp.int32)
  lead = np.array([0, 3, 6, 1, 0, 2])[:b]  # row r's first `lead[r]` tokens are padding
  valid = np.arange(t)[None, :] >= lead[:, None]
  per_row = pages_per_row(capacity, page)
  ppg = per_row * (b // groups) + 3  # a few spare pages, so page ids are not just 0..n-1
  table = _scattered_table(rng, b, groups, ppg, per_row, [per_row] * b)
  contiguous = KVCache.init(CFG, b, capacity)
  paged = PagedKVCache.init(CFG, b, capacity, page, ppg, groups).replace(table=jnp.asarray(table))
  pos = positions_from_valid(jnp.asarray(valid[:, :pre]))
  adv = jnp.full((b,), pre, jnp.int32)
  args = (tokens[:, :pre], pos, jnp.asarray(valid[:, :pre]), adv)
  want, contiguous = step(params, args[0], args[1], contiguous, args[2], args[3])
  got, paged = step(params, args[0], args[1], paged, args[2], args[3])
  np.testing.assert_allclose(np.asarray(got)[valid[:, :pre]],
                             np.asarray(want)[valid[:, :pre]], atol=1e-5, rtol=0)
  for i in range(pre, t):
    live = np.ones(b, bool)
    live[2] = i < 14  # row 2 stops: it writes a hole at its cursor and does not advance
    pos = jnp.asarray((i - lead)[:, None], jnp.int32)
    v = jnp.asarray(live[:, None])
    adv = jnp.asarray(live, jnp.int32)
    want, contiguous = step(params, tokens[:, i:i + 1], pos, contiguous, v, adv)
    got, paged = step(params, tokens[:, i:i + 1], pos, paged, v, adv)
    np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], atol=1e-5,
                               rtol=0)
  np.testing.assert_array_equal(np.asarray(paged.cursor), np.asarray(contiguous.cursor))
  np.testing.assert_array_equal(np.asarray(paged.valid)[:, :capacity],
                                np.asarray(contiguous.valid))


def test_gather_and_scatter_pages_match_numpy():
  rng = np.random.default_rng(5)
  l, g, p, n, kh, dh, b, m = 2, 2, 5, 3, 2, 4, 4, 3
  pool = rng.normal(size=(g, kh, l, p, n, dh)).astype(np.float32)
  table = np.array([[4, 0, p], [2, 1, p], [3, p, p], [0, 4, 1]], np.int32)  # rows 0-1: group 0
  layer = 1
  got = np.asarray(gather_pages(jnp.asarray(pool), jnp.int32(layer), jnp.asarray(table[:, :2])))
  for r in range(b):
    for j in range(2):
      if table[r, j] < p:
        np.testing.assert_array_equal(got[r, j * n:(j + 1) * n],
                                      pool[r // 2, :, layer, table[r, j]].transpose(1, 0, 2))
  slots = np.array([[0, 4], [5, 7], [2, 3], [8, 9]], np.int32)  # 7, 3, 9: unassigned or past M
  vals = rng.normal(size=(b, 2, kh, dh)).astype(np.float32)
  out = np.asarray(scatter_pages(jnp.asarray(pool), jnp.int32(layer), jnp.asarray(table),
                                 jnp.asarray(slots), jnp.asarray(vals)))
  want = pool.copy()
  for r in range(b):
    for t in range(2):
      pg = slots[r, t] // n
      if pg < m and table[r, pg] < p:
        want[r // 2, :, layer, table[r, pg], slots[r, t] % n] = vals[r, t]
  np.testing.assert_array_equal(out, want)
  assert not np.array_equal(out, pool)  # something was written


def test_writes_past_a_rows_pages_are_dropped():
  """A row holding one page writes a chunk longer than it: the part past its page goes
  nowhere; every other row's pages are untouched and its `limit` says where it must stop."""
  params = _params(2)
  b, page, capacity = 2, 4, 16
  cache = PagedKVCache.init(CFG, b, capacity, page, 6)
  table = np.full((b, 4), 6, np.int32)
  table[0, 0] = 3
  table[1, :2] = [0, 5]
  cache = cache.replace(table=jnp.asarray(table))
  np.testing.assert_array_equal(np.asarray(cache.limit), [4, 8])
  before = np.asarray(cache.k).copy()
  before[0, :, :, 3] = 1.0  # mark row 0's page: the result must change only it
  cache = cache.replace(k=jnp.asarray(before))
  tokens = jnp.ones((b, 6), jnp.int32)
  valid = jnp.asarray([[True] * 6, [False] * 6])
  _, out = Decoder(CFG).apply({"params": params}, tokens, positions_from_valid(valid), cache,
                              valid)
  after = np.asarray(out.k)
  changed = {int(x) for x in np.argwhere(np.any(after != before, axis=(0, 1, 2, 4, 5)))[:, 0]}
  # Row 0's 4 slots on page 3 (its last 2 tokens dropped); row 1's padding, written as holes
  # at its slots 0-5, on its own pages 0 and 5. The pages nobody holds are untouched.
  assert changed == {0, 3, 5}
  np.testing.assert_array_equal(after[:, :, :, [1, 2, 4]], before[:, :, :, [1, 2, 4]])


def _interpret_pallas():
  """Runs JAX's Pallas TPU kernels in Pallas's TPU interpreter (on the CPU): the real kernel
  code, DMAs and semaphores included, without a TPU."""
  import functools
  from unittest import mock
  from jax.experimental.pallas import tpu as pltpu
  from aci_jax.model.kernels.paged import pak
  return mock.patch.object(pak.pl, "pallas_call", functools.partial(
      pak.pl.pallas_call, interpret=pltpu.InterpretParams()))


@pytest.mark.parametrize("mesh_shape", [None, (4, 1, 2)])
def test_pallas_paged_kernel_equals_the_gather_loop(mesh_shape):
  """The TPU paged-attention kernel (interpreted) on the stacked bf16 pool, layer by layer
  through the `l * P + p` page numbering, rows of different lengths with scattered pages, gives
  the gather loop's attention at 1e-5 (values are bf16, so the kernel's cast is exact); with a
  mesh, inside the shard_map over page groups and kv heads (8 CPU devices)."""
  from aci_jax.model.kernels.paged import paged_decode
  from aci_jax.model.live_attention import cached_attention
  from aci_jax.parallel import MeshConfig, make_mesh

  mesh = None if mesh_shape is None else make_mesh(MeshConfig(*mesh_shape))
  groups = 1 if mesh is None else 4
  rng = np.random.default_rng(6)
  l, b, kh, h, dh, n, m = 3, 8, 2, 4, 128, 8, 4
  ppg = m * (b // groups) + 2
  shape = (groups, kh, l, ppg, n, dh)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  k_pool, v_pool = bf(rng.normal(size=shape)), bf(rng.normal(size=shape))
  lengths = np.array([1, 9, 32, 17, 5, 24, 30, 8], np.int32)
  held = [-(-x // n) for x in lengths]
  table = jnp.asarray(_scattered_table(rng, b, groups, ppg, m, held))
  q = bf(rng.normal(size=(b, 1, h, dh)))
  key_valid = jnp.asarray(np.arange(m * n)[None, :] < lengths[:, None])
  q_slot = jnp.asarray(lengths[:, None] - 1)
  for layer in range(l):
    want = cached_attention(q.astype(jnp.float32), k_pool.astype(jnp.float32),
                            v_pool.astype(jnp.float32), jnp.int32(layer), q_slot, key_valid,
                            block=16, table=table)
    with _interpret_pallas():
      got = paged_decode(q[:, 0].astype(jnp.float32), k_pool, v_pool, jnp.int32(layer), table,
                         jnp.asarray(lengths), block_pages=2, mesh=mesh)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want)[:, 0], atol=1e-5, rtol=0)
