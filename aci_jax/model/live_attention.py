"""Attention over the KV cache that reads only the live part of it.

The cache (`aci_jax.model.cache`) has S slots per row, but a row's keys live in its first
`cursor` slots (every slot at or past the cursor is invalid). `cached_attention` visits the
cache in key blocks of `block` slots with flash-attention's online softmax, in a `while_loop`
whose trip count is a traced scalar: the number of blocks up to the last slot any query of the
call sits at (the longest row of the batch; a finished row counts until it is refilled), not
S / block. Each block is sliced straight out of the stacked `[L, B, S, K, Dh]` cache at
(layer, block), so no per-layer copy of K and V is made (slicing the whole layer out of the
scan's carried cache made XLA copy it every layer of every step), and the slots past the
longest row are never read. Shapes stay static, so nothing recompiles as rows grow.

A paged cache (`PagedKVCache`) is read the same way, a block being a whole number of pages
gathered per row through its block table (the CPU/GPU path). The loop still runs to the
longest row: a shorter row reads a clamped page there (masked), so per-row live reads are the
paged kernel's job, not this loop's; what paging changes is the memory each row holds.

The mask is the decoder's (key valid and causal by slot); a fully masked query (padding) gets
the mean of the values it visited, as in `aci_jax.model.attention`; nothing reads those rows.

The planner (`aci_jax.plan`) recognises the loop by its name scope, `live_kv_blocks_<block>`,
and multiplies its body by the blocks an assumed live length needs (its trip count is not a
compile-time constant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aci_jax.model.attention import MASKED, _active_mesh, online_softmax_step
from aci_jax.model.cache import gather_pages
from aci_jax.model.kernels.paged import paged_decode, paged_kernel_applies

LOOP_SCOPE = "live_kv_blocks"


def block_size(capacity: int, block: int) -> int:
  """The key block for a cache of `capacity` slots: `block`, or the whole cache if smaller."""
  return min(block, capacity)


def chunk_block(length: int, block: int) -> int:
  """The key block for a chunk of `length` queries: `block`, halved while the chunk's f32
  scores per block ([B, H, length, block]) would exceed what a 1,024-token chunk at 256 slots
  holds (a 4,096-token re-prefill reads 64-slot blocks); at least 16."""
  while block > 16 and length * block > 1024 * 256:
    block //= 2
  return block


def cached_attention(q, k_cache, v_cache, layer, q_slot, key_valid, *, block: int = 256,
                     table=None, lengths=None):
  """q [B, T, H, Dh]; k_cache / v_cache either the contiguous [L, B, S, K, Dh] cache, or with
  `table` [B, M] the page pool [G, K, L, P, N, Dh] of a `PagedKVCache` (this call's tokens
  already written at `q_slot`); layer: scalar index into L; q_slot [B, T] int32; key_valid
  [B, S] bool (S = M * N when paged). Returns [B, T, H, Dh] in v's dtype.

  `lengths` [B] int32 is the caller's promise that row b's valid slots are exactly those below
  lengths[b] (no holes). With it, a one-token step over a paged cache the kernel takes
  (`paged_kernel_applies`), compiled for a TPU inside `attention.kernel_mesh`, runs the Pallas
  paged-attention kernel (`kernels/paged.py`: each row reads its own live pages by DMA);
  everywhere else, the loop below.

  One loop over key blocks for all T queries (a loop per query block made XLA copy the whole
  cache into each loop); `chunk_block` keeps the scores of long chunks small. Paged, a block is
  a whole number of pages, gathered per row from its block table (the CPU/GPU path; no
  [B, S] copy of the cache is made)."""
  b, t, h, dh = q.shape
  active = _active_mesh()
  if (table is not None and lengths is not None and t == 1 and active is not None
      and paged_kernel_applies(k_cache)):
    def kernel(q, k_cache, v_cache, layer, table, lengths, q_slot, key_valid):
      del q_slot, key_valid  # the lengths say the same for rows without holes
      # One page per compute block: a row's reads end at its last page (with 128-slot pages
      # and rows of ~600 tokens, 2-page blocks would read 768 slots instead of 640).
      return paged_decode(q[:, 0], k_cache, v_cache, layer, table, lengths, block_pages=1,
                          mesh=active[0])[:, None]

    def loop(q, k_cache, v_cache, layer, table, lengths, q_slot, key_valid):
      del lengths
      return cached_attention(q, k_cache, v_cache, layer, q_slot, key_valid, block=block,
                              table=table)

    return jax.lax.platform_dependent(q, k_cache, v_cache, layer, table, lengths, q_slot,
                                      key_valid, tpu=kernel, default=loop)
  kh = k_cache.shape[3] if table is None else k_cache.shape[1]
  if table is None:
    s = k_cache.shape[2]
    block = block_size(s, chunk_block(t, block))

    def read(start):
      kk = jax.lax.dynamic_slice(k_cache, (layer, 0, start, 0, 0), (1, b, block, kh, dh))[0]
      vv = jax.lax.dynamic_slice(v_cache, (layer, 0, start, 0, 0), (1, b, block, kh, dh))[0]
      return kk, vv
  else:
    page, m = k_cache.shape[4], table.shape[1]
    s = m * page
    per = max(1, min(m, chunk_block(t, block) // page))  # pages per block
    block = per * page

    def read(start):  # `start` is a multiple of the page size
      pages = jax.lax.dynamic_slice(table, (0, start // page), (b, per))
      return gather_pages(k_cache, layer, pages), gather_pages(v_cache, layer, pages)

  g = h // kh
  # Every query's slot is below max(q_slot) + 1: the blocks up to it hold all it may attend.
  n_blocks = jnp.minimum(jnp.max(q_slot) // block + 1, -(-s // block)).astype(jnp.int32)
  scale = dh ** -0.5
  qg = q.reshape(b, t, kh, g, dh)

  def body(carry):
    j, m, l, acc = carry
    lo = j * block
    # The last block of a cache whose size is not a multiple of `block` is clamped back into
    # range; slots before `lo` were counted already and are masked.
    start = jnp.minimum(lo, s - block)
    kk, vv = read(start)
    kvalid = jax.lax.dynamic_slice(key_valid, (0, start), (b, block))
    kslot = start + jnp.arange(block, dtype=jnp.int32)
    mask = (kvalid[:, None, :] & (kslot[None, None, :] <= q_slot[:, :, None])
            & (kslot >= lo)[None, None, :])
    sc = jnp.einsum("btkgd,bskd->bkgts", qg, kk, preferred_element_type=jnp.float32) * scale
    sc = jnp.where(mask[:, None, None], sc, MASKED)
    return (j + 1, *online_softmax_step(m, l, acc, sc, vv))

  init = (jnp.int32(0), jnp.full((b, kh, g, t), -jnp.inf, jnp.float32),
          jnp.zeros((b, kh, g, t), jnp.float32), jnp.zeros((b, kh, g, t, dh), jnp.float32))
  if block >= s:
    # The whole cache is one block (caches sized to the job on a CPU): one pass, no loop. A
    # while_loop per layer per decode step cost SmolLM2 (30 layers, 198 slots) 23% of its
    # batch-1 decode step on CPU (44.9 -> 55.0 ms).
    _, _, l, acc = body(init)
  else:
    with jax.named_scope(f"{LOOP_SCOPE}_{block}"):
      _, _, l, acc = jax.lax.while_loop(lambda c: c[0] < n_blocks, body, init)
  out = acc / l[..., None]  # [B, K, G, T, Dh]
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, dh).astype(v_cache.dtype)
