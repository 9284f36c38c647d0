"""The explicit key/value cache: a pytree that goes into and comes out of every compiled call.

Layout (L layers, B rows, S slots, K kv-heads, Dh head dim):
  k, v:   [L, B, S, K, Dh]  keys (already rotated by RoPE) and values, compute dtype
  valid:  [B, S] bool       the slot holds a real token that later queries may attend to
  cursor: [B] int32         the next slot each row writes to

Rows are independent: each has its own cursor, so one row can be paused for a tool call while
another keeps decoding, and `extend` can splice a different number of tokens into each row.
A slot whose token was padding stays `valid=False` forever (a "hole"): attention skips it, so
left padding and ragged splices need no re-packing. Positions (for RoPE) are supplied by the
caller per token and are independent of slot indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from aci_jax.model.config import ModelConfig


@struct.dataclass
class KVCache:
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  cursor: jax.Array

  @property
  def capacity(self) -> int:
    """S, the number of slots per row."""
    return self.k.shape[2]

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, capacity: int) -> "KVCache":
    shape = (cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim)
    return cls(
        k=jnp.zeros(shape, cfg.compute_dtype),
        v=jnp.zeros(shape, cfg.compute_dtype),
        valid=jnp.zeros((batch, capacity), jnp.bool_),
        cursor=jnp.zeros((batch,), jnp.int32),
    )

  def clear_rows(self, rows: jax.Array) -> "KVCache":
    """The cache with the rows where `rows` [B] is True emptied: every slot invalid, cursor 0
    (k and v are left as they are: nothing attends to an invalid slot)."""
    return self.replace(valid=jnp.where(rows[:, None], False, self.valid),
                        cursor=jnp.where(rows, 0, self.cursor))


def write_slots(cursor: jax.Array, length: int) -> jax.Array:
  """[B, T] int32 slot index of each incoming token: cursor[b] + t."""
  return cursor[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]


def scatter_rows(buf: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
  """buf[b, slots[b, t]] = values[b, t] for every row b.

  Writes past the end of the buffer are dropped rather than clamped: a clamped write (what
  `dynamic_update_slice` does) would silently overwrite the last valid tokens. Callers check
  capacity on the host before they run out of slots.
  """
  rows = jnp.arange(buf.shape[0], dtype=jnp.int32)[:, None]
  return buf.at[rows, slots].set(values.astype(buf.dtype), mode="drop")


def scatter_layer_rows(buf: jax.Array, layer, slots: jax.Array, values: jax.Array) -> jax.Array:
  """buf[layer, b, slots[b, t]] = values[b, t] for a stacked [L, B, S, ...] buffer (same drop
  semantics as `scatter_rows`)."""
  rows = jnp.arange(buf.shape[1], dtype=jnp.int32)[:, None]
  return buf.at[layer, rows, slots].set(values.astype(buf.dtype), mode="drop")
