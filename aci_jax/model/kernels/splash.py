"""Our attention through JAX's Pallas TPU splash-attention kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`).

The mask to compute (see `aci_jax.model.attention`) is

    key_valid[b, s]  and  s <= q_slot[b, t]  and  q_seg[b, t] == k_seg[b, s].

Splash attention takes a static mask (the same for every row, known at trace time) and, per
row, query/key segment ids compared for equality inside the kernel. Validity is folded into
the key segment ids: an invalid key gets a segment id that no query of its row has
(`min(q_seg) - 1`), so no query attends to it. Causality by slot is a static mask only when
every row's queries occupy consecutive slots:

- *self* (training, scoring): `q_slot[b, t] == t` and S == T: a causal mask over the chunk.
- *extend* (a chunk written at per-row cursors c[b], `q_slot[b, t] == c[b] + t`): the keys are
  the row's cache with slots >= c[b] marked invalid (the prefix: every query may see all of
  it), followed by the chunk's own T slots gathered from c[b] (causal among themselves); one
  static mask `CausalMask((T, S + T), offset=S)` covers both halves.

Whatever else arrives (slots that are not consecutive, a chunk that runs past the cache end)
is not expressible by a static mask; `splash_attention` checks this on device and runs the
caller's fallback instead (`lax.switch`, so both are compiled and the choice costs a few
integer comparisons). Lengths are padded to multiples of 128 (the kernel's lane width); padded
keys are invalid and padded queries are dropped.

The kernel takes no score scale: queries are scaled by Dh^-0.5 before the call (in their own
dtype: in bf16 one more rounding of q, relative 2^-9, than the other paths' float32 scores).
Segment ids must stay above the int32 minimum (the "no query" id is one below). GQA is native
(K key heads for H query heads). A fully masked query (a padding token) gets finite garbage
(the mean of the values of the blocks it visits), as in the other paths; nothing reads it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

LANES = 128  # lengths are padded to a multiple of this (the kernel's minimum key block)
_BLOCKS = (512, 256, 128)  # largest first; 512 is the size the kernel authors tune for


def _block(n: int) -> int:
  return next(b for b in _BLOCKS if n % b == 0)


def _kernel(heads: int, t: int, s: int, offset: int, interpret: bool):
  """Splash kernel for a causal mask over [t queries, s keys] shifted by `offset`. Built
  afresh inside each trace: it holds the mask's block tables as arrays of that trace."""
  mask = sm.MultiHeadMask([sm.CausalMask((t, s), offset=offset)] * heads)
  bq, bkv = _block(t), _block(s)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                        block_kv_dq=bkv)
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def _pad(x, n, axis, value=0):
  extra = n - x.shape[axis]
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _round_up(n: int) -> int:
  return -(-n // LANES) * LANES


def _run(q, keys, values, q_seg, kv_seg, offset, interpret):
  """q [B, T', H, Dh] (scaled, T' a multiple of 128), keys/values [B, S', K, Dh], segment ids
  [B, T'] / [B, S'] -> [B, T', H, Dh]."""
  _, t, h, _ = q.shape
  kernel = _kernel(h, t, keys.shape[1], offset, interpret)

  def one(q, k, v, qs, ks):
    return kernel(q, k, v, sk.SegmentIds(q=qs, kv=ks))

  out = jax.vmap(one)(jnp.swapaxes(q, 1, 2), jnp.swapaxes(keys, 1, 2),
                      jnp.swapaxes(values, 1, 2), q_seg, kv_seg)
  return jnp.swapaxes(out, 1, 2)


def _queries(q, q_seg):
  """Scaled, padded queries; their segment ids; the per-row id no query has."""
  b, t, _, dh = q.shape
  tp = _round_up(t)
  qs = jnp.zeros((b, t), jnp.int32) if q_seg is None else q_seg.astype(jnp.int32)
  nobody = jnp.min(qs, axis=1, keepdims=True) - 1  # [B, 1]
  qs = jnp.concatenate([qs, jnp.broadcast_to(nobody, (b, tp - t))], axis=1)
  q = _pad((q.astype(jnp.float32) * dh ** -0.5).astype(q.dtype), tp, 1)
  return q, qs, nobody


def _self(q, k, v, key_valid, q_seg, k_seg, interpret):
  """Causal attention of a chunk over itself (q_slot[b, t] == t, S == T)."""
  t = q.shape[1]
  q, qs, nobody = _queries(q, q_seg)
  tp = q.shape[1]
  ks = jnp.zeros(key_valid.shape, jnp.int32) if k_seg is None else k_seg.astype(jnp.int32)
  ks = _pad(jnp.where(key_valid, ks, nobody), tp, 1)
  ks = jnp.where(jnp.arange(tp) < t, ks, nobody)
  out = _run(q, _pad(k, tp, 1), _pad(v, tp, 1), qs, ks, 0, interpret)
  return out[:, :t]


def _extend(q, k, v, q_slot, key_valid, q_seg, k_seg, interpret):
  """A chunk at per-row cursors c = q_slot[:, 0] (q_slot[b, t] == c[b] + t, c[b] + T <= S)."""
  b, t = q_slot.shape
  s = k.shape[1]
  cursor = q_slot[:, 0]
  ks = jnp.zeros((b, s), jnp.int32) if k_seg is None else k_seg.astype(jnp.int32)
  q, qs, nobody = _queries(q, q_seg)
  tp, sp = q.shape[1], _round_up(s)
  # Prefix: the whole cache, slots at or after the cursor invalid (the chunk's own slots come
  # again below, causally; later slots are never visible to this chunk).
  before = key_valid & (jnp.arange(s)[None] < cursor[:, None])
  prefix_seg = _pad(jnp.where(before, ks, nobody), sp, 1, 0)
  prefix_seg = jnp.where(jnp.arange(sp) < s, prefix_seg, nobody)
  take = jax.vmap(lambda x, c: jax.lax.dynamic_slice_in_dim(x, c, t, axis=0))
  chunk_seg = jnp.where(take(key_valid, cursor), take(ks, cursor), nobody)
  chunk_seg = jnp.concatenate([chunk_seg, jnp.broadcast_to(nobody, (b, tp - t))], axis=1)
  keys = jnp.concatenate([_pad(k, sp, 1), _pad(take(k, cursor), tp, 1)], axis=1)
  values = jnp.concatenate([_pad(v, sp, 1), _pad(take(v, cursor), tp, 1)], axis=1)
  kv_seg = jnp.concatenate([prefix_seg, chunk_seg], axis=1)
  out = _run(q, keys, values, qs, kv_seg, sp, interpret)
  return out[:, :t]


def case(q_slot, s: int):
  """On device: 0 = self (slots 0..T-1 and S == T), 1 = extend (consecutive slots from a
  per-row cursor, inside the cache), 2 = neither (the fallback)."""
  t = q_slot.shape[1]
  steps = jnp.arange(t, dtype=q_slot.dtype)
  start = q_slot[:, :1]
  consecutive = jnp.all(q_slot == start + steps) & jnp.all(start >= 0) & jnp.all(start + t <= s)
  from_zero = jnp.all(q_slot == steps[None]) if s == t else jnp.bool_(False)
  return jnp.where(from_zero, 0, jnp.where(consecutive, 1, 2)).astype(jnp.int32)


def splash_attention(q, k, v, q_slot, key_valid, q_seg, k_seg, *, fallback, interpret=False,
                     chunk_only=False):
  """`dense_attention`'s function through splash attention where a static mask expresses it,
  `fallback` (same signature as `dense_attention`) otherwise; `interpret` runs the kernel in
  Pallas's interpreter (any backend; for tests). `chunk_only`: the caller guarantees the self
  case (keys are the chunk, q_slot[b, t] == t), so no check and no fallback is compiled; a
  `lax.switch` under `jax.grad` keeps the residuals of every branch (+0.7 GiB per chip on the
  Qwen2.5-7B training chunk of docs/model.md), which this avoids."""
  s, t = k.shape[1], q.shape[1]
  if chunk_only:
    if s != t:
      raise ValueError(f"chunk_only needs as many keys as queries, got {s} and {t}")
    return _self(q, k, v, key_valid, q_seg, k_seg, interpret)
  branches = [
      lambda *a: _self(a[0], a[1], a[2], a[4], a[5], a[6], interpret),
      lambda *a: _extend(*a, interpret),
      lambda *a: fallback(*a),
  ]
  index = case(q_slot, s)
  if s == t:  # consecutive slots inside the cache must start at 0: extend is never taken
    branches, index = [branches[0], branches[2]], jnp.minimum(index, 1)
  else:  # no self case: its branch would not even trace (the keys are not the chunk)
    branches, index = branches[1:], index - 1
  return jax.lax.switch(index, branches, q, k, v, q_slot, key_valid, q_seg, k_seg)
