"""The explicit key/value caches: pytrees that go into and come out of every compiled call.

Two layouts of the same slots. `KVCache` gives every row its own S slots (simple; what tests,
scoring and short jobs use). `PagedKVCache` keeps the keys and values of all rows in a shared
pool of fixed-size pages and maps each row's slots onto pages through a per-row block table, so
a row holds memory only for the tokens it has (the rollout engine's cache: rows that fit scale
with live tokens, not with S). Both present the same per-row slot space to the decoder (valid
mask, cursor, capacity), so pause / splice / resume and holes work alike.

`KVCache` layout (L layers, B rows, S slots, K kv-heads, Dh head dim):
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

  @property
  def limit(self) -> jax.Array:
    """[B] int32: the slots each row may write before it must wait for memory (all S)."""
    return jnp.full(self.cursor.shape, self.capacity, jnp.int32)

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


@struct.dataclass
class PagedKVCache:
  """Keys and values in a shared pool of pages; the slot space of each row as in `KVCache`.

  Layout (G page groups, P pages per group, N slots per page, M = ceil(S / N) pages per row):
    k, v:     [G, K, L, P, N, Dh]  the pool; group g serves rows g * B/G ... (g+1) * B/G - 1
    table:    [B, M] int32         the row's m-th page (slots m*N ... m*N+N-1) within its
                                   group's P pages; P where none is assigned
    valid:    [B, M*N] bool        as `KVCache.valid` (slots past `capacity` stay invalid)
    cursor:   [B] int32            as `KVCache.cursor`
    capacity: static int           S, the slots a row may grow to (the sampler's length stop)

  Groups are the data-parallel shards: sharded over the row axes, a group's pages live on the
  chips that hold its rows, so reading and writing a row's pages never crosses chips (the
  gather and scatter run per group, `jax.vmap` over G). Within a group and kv head the layers'
  pages are one run of L * P pages ([K, L * P, N, Dh] is a free reshape): the layout of the
  Pallas TPU paged-attention kernel, which then reads layer l's page p as page l * P + p
  without a per-layer copy (`kernels/paged.py`). Pages are assigned by the host
  (`aci_jax.rollout.pages.PagePool`) and pushed with `replace(table=...)`: a row's pages are a
  prefix of its table, taken as its cursor grows and given back when it is reset. Writes to a
  slot whose page is not assigned are dropped (never clamped onto another row's page); a row
  may write only below `limit`, which the sampler checks before every token.
  """

  k: jax.Array
  v: jax.Array
  table: jax.Array
  valid: jax.Array
  cursor: jax.Array
  capacity: int = struct.field(pytree_node=False, default=0)

  @property
  def page_size(self) -> int:
    return self.k.shape[4]

  @property
  def pages_per_group(self) -> int:
    return self.k.shape[3]

  @property
  def groups(self) -> int:
    return self.k.shape[0]

  @property
  def limit(self) -> jax.Array:
    """[B] int32: slots covered by the row's assigned pages (a prefix of its table), at most
    `capacity`."""
    held = jnp.sum(self.table < self.pages_per_group, axis=1, dtype=jnp.int32)
    return jnp.minimum(held * self.page_size, self.capacity)

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, capacity: int, page_size: int,
           pages_per_group: int, groups: int = 1) -> "PagedKVCache":
    if batch % groups:
      raise ValueError(f"{batch} rows do not divide into {groups} page groups")
    per_row = pages_per_row(capacity, page_size)
    shape = (groups, cfg.num_kv_heads, cfg.num_layers, pages_per_group, page_size, cfg.head_dim)
    return cls(
        k=jnp.zeros(shape, cfg.compute_dtype),
        v=jnp.zeros(shape, cfg.compute_dtype),
        table=jnp.full((batch, per_row), pages_per_group, jnp.int32),
        valid=jnp.zeros((batch, per_row * page_size), jnp.bool_),
        cursor=jnp.zeros((batch,), jnp.int32),
        capacity=capacity,
    )

  def clear_rows(self, rows: jax.Array) -> "PagedKVCache":
    """As `KVCache.clear_rows`. The table is left alone: pages belong to the host's allocator,
    which takes them back when it resets the row and pushes the new table."""
    return self.replace(valid=jnp.where(rows[:, None], False, self.valid),
                        cursor=jnp.where(rows, 0, self.cursor))


def pages_per_row(capacity: int, page_size: int) -> int:
  """M: the pages that cover `capacity` slots."""
  return -(-capacity // page_size)


def _by_group(x: jax.Array, groups: int) -> jax.Array:
  """[B, ...] -> [G, B/G, ...]: rows split into their page groups (a free reshape)."""
  return x.reshape(groups, x.shape[0] // groups, *x.shape[1:])


def gather_pages(pool: jax.Array, layer, pages: jax.Array) -> jax.Array:
  """pool [G, K, L, P, N, Dh], pages [B, n] int32 (within each row's group) ->
  [B, n * N, K, Dh]: the slots of those pages of layer `layer`, row by row. Unassigned
  entries (P) read a clamped page; callers mask those slots (they are past the cursor)."""
  g, kh, _, _, n_slots, dh = pool.shape
  b, n = pages.shape
  got = jax.vmap(lambda p, i: p.at[:, layer, i].get(mode="clip"))(
      pool, _by_group(pages, g))  # [G, K, B/G, n, N, Dh]
  return jnp.moveaxis(got, 1, 4).reshape(b, n * n_slots, kh, dh)


def scatter_pages(pool: jax.Array, layer, table: jax.Array, slots: jax.Array,
                  values: jax.Array) -> jax.Array:
  """pool[group(b), :, layer, page of slots[b, t], offset] = values[b, t] for a paged pool
  [G, K, L, P, N, Dh]; table [B, M]; slots [B, T] int32; values [B, T, K, Dh]. A slot past the
  table, or on a page not assigned, is dropped."""
  g, p, n = pool.shape[0], pool.shape[3], pool.shape[4]
  m = table.shape[1]
  idx = slots // n
  page = jnp.take_along_axis(table, jnp.clip(idx, 0, m - 1), axis=1)
  page = jnp.where((idx >= 0) & (idx < m), page, p)
  off = slots % n
  vals = jnp.moveaxis(values.astype(pool.dtype), 2, 0)  # [K, B, T, Dh]
  # The kv head is an index of the scatter, not part of its window: each update is one
  # [Dh] row, so the compiler keeps the pool in its row-major layout (a [K, Dh] window made
  # it interleave K with Dh, and the paged kernel then needed a relayout copy of the pool).
  heads = jnp.arange(pool.shape[1], dtype=jnp.int32)[:, None, None]
  return jax.vmap(lambda pl, pg, o, val: pl.at[heads, layer, pg[None], o[None]].set(
      val, mode="drop"), in_axes=(0, 0, 0, 1))(
          pool, _by_group(page, g), _by_group(off, g),
          vals.reshape(vals.shape[0], g, -1, *vals.shape[2:]))
