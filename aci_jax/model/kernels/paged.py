"""One-token decode attention over the paged KV cache through JAX's Pallas TPU paged-attention
kernel (`jax.experimental.pallas.ops.tpu.paged_attention`).

The kernel attends query row b to the first `lengths[b]` slots of the pages
`page_indices[b]` of `k_pages` / `v_pages` [K, pages, N, Dh], copying each row's pages from
HBM by DMA: a row reads its own live pages and nothing else (no gather into a temporary, no
slots past its length). Its mask is a length only, so it computes our masked attention
(`aci_jax.model.attention`) only when a row's valid slots are exactly those below its length:
the caller promises that (the sampler's rows have no holes: chunks are right-padded and a row
that does not run writes at its cursor without advancing).

The pool of a `PagedKVCache` is [G, K, L, P, N, Dh]; within a group and kv head, the layers'
pages form one run of L * P pages, so [K, L * P, N, Dh] is a free reshape and layer l's page p
is page l * P + p: the kernel reads one layer's pages out of the stacked pool without a
per-layer copy. Pages a row does not hold (P in its table) become page 0 of the layer, so
every index is in range; the kernel does not reach them (they lie past the row's length).

The kernel casts K and V to bfloat16 inside (its `_maybe_dequantize`) and its lowering needs a
head dim of whole 128-lane tiles: it is used where both hold (`paged_kernel_applies`). It
takes no score scale (queries are scaled before the call). It cannot be partitioned by the
TPU compiler: `paged_decode` runs it inside a
`shard_map` over the active mesh (`attention.kernel_mesh`), rows and page groups over the
data axes, kv heads (and their query heads) over `tensor`, one group per shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention_kernel as pak
from jax.sharding import PartitionSpec as P

from aci_jax.parallel.rules import ROW_AXES

# The kernel call's name scope, `paged_kv_pages_<slots per compute block>`: the planner
# (`aci_jax.plan.traffic`) counts the call's reads as the live pages it copies, which the
# compiled program cannot show (the pages are DMA'd by the kernel from operands it takes whole).
KERNEL_SCOPE = "paged_kv_pages"


def paged_kernel_applies(pool) -> bool:
  """Whether the kernel computes our attention over `pool` [G, K, L, P, N, Dh]: bf16 pages
  (its internal cast is then exact) and a head dim of whole 128-lane tiles (its Mosaic
  lowering needs that of the per-head softmax statistics it writes)."""
  return pool.dtype == jnp.bfloat16 and pool.shape[-1] % 128 == 0


def pages_per_block(pages_per_row: int, block_pages: int) -> int:
  """The kernel's pages per compute block: the largest divisor of the row's pages that is at
  most `block_pages` (the kernel needs a divisor)."""
  best = 1
  for d in range(1, min(pages_per_row, max(block_pages, 1)) + 1):
    if pages_per_row % d == 0:
      best = d
  return best


def paged_decode_local(q, k_pool, v_pool, layer, table, lengths, *, block_pages: int):
  """q [B, H, Dh]; pools [G, K, L, P, N, Dh]; layer: scalar; table [B, M] int32 (pages
  within each row's group, P = none); lengths [B] int32 -> [B, H, Dh] in q's dtype. One kernel
  call per group (G is 1 inside `paged_decode`'s shard_map)."""
  g, kh, nl, p, n, dh = k_pool.shape
  b, m = table.shape
  ppb = pages_per_block(m, block_pages)
  q = (q.astype(jnp.float32) * dh ** -0.5).astype(q.dtype)
  pages = jnp.where(table < p, table, 0) + layer * p
  lengths = jnp.clip(lengths, 0, m * n).astype(jnp.int32)
  rows = b // g
  out = []
  for gi in range(g):
    sl = slice(gi * rows, (gi + 1) * rows)
    with jax.named_scope(f"{KERNEL_SCOPE}_{ppb * n}"):
      out.append(pak.paged_attention(
          q[sl], k_pool[gi].reshape(kh, nl * p, n, dh), v_pool[gi].reshape(kh, nl * p, n, dh),
          lengths[sl], pages[sl], pages_per_compute_block=ppb))
  return out[0] if g == 1 else jnp.concatenate(out, axis=0)


def paged_decode(q, k_pool, v_pool, layer, table, lengths, *, block_pages: int, mesh=None):
  """`paged_decode_local` over `mesh` (None: one call, for an unsharded program)."""
  if mesh is None:
    return paged_decode_local(q, k_pool, v_pool, layer, table, lengths,
                              block_pages=block_pages)
  t = mesh.shape["tensor"]
  heads = "tensor" if k_pool.shape[1] % t == 0 and q.shape[1] % t == 0 else None

  def local(q, k_pool, v_pool, layer, table, lengths):
    return paged_decode_local(q, k_pool, v_pool, layer, table, lengths,
                              block_pages=block_pages)

  pool = P(ROW_AXES, heads, None, None, None, None)
  qs = P(ROW_AXES, heads, None)
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(qs, pool, pool, P(), P(ROW_AXES, None), P(ROW_AXES)),
                       out_specs=qs, check_vma=False)(q, k_pool, v_pool, layer, table, lengths)
