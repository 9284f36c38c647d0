"""Our attention through `jax.nn.dot_product_attention` (cuDNN fused attention on GPU).

Its masks are a causal mask aligned at slot 0 (`is_causal`), per-row key lengths
(`key_value_seq_lengths`: keys 0..len-1 valid) and a dense [B, H, T, S] boolean mask. The last
would bring back the [T, S] tensor this module exists to avoid, so only what the first two
express goes to cuDNN:

- no packing segments (there are no segment ids in this API; packed rows use the fallback),
- a chunk over itself: S == T and `q_slot[b, t] == t` (training and cache-free scoring;
  an extend at per-row cursors would need a per-row causal offset: the fallback),
- right padding only: each row's valid keys are a prefix 0..len[b]-1 with len[b] >= 1 (holes,
  left padding and empty rows use the fallback; an empty row would give cuDNN no key at all).

Padding queries after len[b] then see the row's whole prefix in both paths, as our mask says.
cuDNN's fused kernels take float16/bfloat16 only, so float32 inputs always use the fallback.
The shape and dtype conditions are checked at trace time, the data conditions on device
(`lax.cond`, both sides compiled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def expressible(q, k, q_seg, implementation: str) -> bool:
  """Static part: shapes, dtype and segments."""
  if q_seg is not None or q.shape[1] != k.shape[1]:
    return False
  head_dim = q.shape[-1]
  if implementation == "cudnn":
    return q.dtype in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128
  return True


def fits(q_slot, key_valid):
  """Device part: slots 0..T-1 in every row and valid keys a non-empty prefix per row."""
  t = q_slot.shape[1]
  lengths = jnp.sum(key_valid, axis=1, dtype=jnp.int32)
  prefix = key_valid == (jnp.arange(key_valid.shape[1])[None] < lengths[:, None])
  from_zero = q_slot == jnp.arange(t, dtype=q_slot.dtype)[None]
  return jnp.all(prefix) & jnp.all(from_zero) & jnp.all(lengths >= 1), lengths


def cudnn_attention(q, k, v, q_slot, key_valid, q_seg, k_seg, *, fallback,
                    implementation: str = "cudnn"):
  """`dense_attention`'s function through `jax.nn.dot_product_attention` where its masks
  express ours, `fallback` (same signature) otherwise. `implementation="xla"` runs the same
  call through XLA on any backend (it materialises the scores: for tests only)."""
  if not expressible(q, k, q_seg, implementation):
    return fallback(q, k, v, q_slot, key_valid, q_seg, k_seg)
  ok, lengths = fits(q_slot, key_valid)

  def fused(q, k, v, lengths):
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out.astype(v.dtype)

  return jax.lax.cond(ok, lambda: fused(q, k, v, lengths),
                      lambda: fallback(q, k, v, q_slot, key_valid, q_seg, k_seg))
