"""The Flax decoder shared by Qwen2 and Llama checkpoints.

Pure at the compiled boundary:

    logits, cache = Decoder(cfg).apply({"params": params}, tokens, positions, cache, valid)

Nothing is stored on the module between calls; the KV cache is an explicit `KVCache` pytree that
goes in and comes out (donate it to `jit` so XLA updates it in place). Layers are stacked with
`nn.scan`, so parameters and cache carry a leading layer axis and compile time does not grow with
depth (a 28-layer 7B model compiles as fast as a 2-layer one).

The parameter tree (paths, shapes, which configs have biases or an untied head) is the table
in `aci_jax.model.schema`; the modules below build exactly that tree (a test checks it).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from aci_jax.model import fused as fusion
from aci_jax.model.attention import along_sampling_weights, attention
from aci_jax.model.cache import (KVCache, PagedKVCache, scatter_layer_rows, scatter_pages,
                                 scatter_rows, write_slots)
from aci_jax.model.config import ModelConfig
from aci_jax.model.live_attention import cached_attention
from aci_jax.model.rope import apply_rope, rope_tables
from aci_jax.parallel.rules import constrain

_INIT = nn.initializers.normal(stddev=0.02)  # the Qwen2/Llama `initializer_range`
# Logical axes of activations, for `constrain` (a no-op unless the caller traces under
# `aci_jax.parallel.activation_sharding`, as the train step does).
_X = ("batch", "length", "act_embed")


class RMSNorm(nn.Module):
  """x / rms(x) * scale, with the statistics in float32 (as the reference implementations do)."""

  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * y.astype(self.dtype)


def _dense(cfg: ModelConfig, features: int, use_bias: bool, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=cfg.compute_dtype,
                  param_dtype=cfg.weight_dtype, kernel_init=_INIT, name=name)


def _norm(cfg: ModelConfig, name: str) -> RMSNorm:
  return RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)


class Attention(nn.Module):
  """Grouped-query attention over the cache (or over the chunk itself when there is no cache)."""

  cfg: ModelConfig

  attn_block: int = 512
  live_block: int = 256
  prefix_kv: bool = False
  fused: int = 0  # G > 0: one grouped q/k/v kernel (`aci_jax.model.fused`), the sampler's

  @nn.compact
  def __call__(self, x, sin, cos, slots, key_valid, segment_ids, kv, layer):
    """x [B, T, D]; sin/cos [B, T, Dh/2]; slots [B, T] int32 (each token's cache slot);
    key_valid [B, S] bool; segment_ids [B, T] int32 or None (packed rows, no cache);
    kv: None; or the whole cache (k, v) each [L, B, S, K, Dh]; or a paged one (k, v, table),
    pools [G, K, L, P, N, Dh] and block table [B, M]; `layer` is the index of this layer in
    it. Returns ([B, T, D], updated kv or None)."""
    cfg = self.cfg
    b, t, _ = x.shape
    h, k_heads, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = ("batch", "length", "heads", "head_dim")
    kv_heads = ("batch", "length", "kv_heads", "head_dim")
    # Sampling: each projection on the chip's own slice of its sampling weight, all rows
    # (`along_sampling_weights`); a no-op in training.
    logical = ("heads", "kv_heads", "kv_heads")
    if self.fused:
      # One matmul, so the layer's input is read from HBM once, not three times.
      parts = _fused_proj(cfg, x, "qkv_proj", cfg.qkv_bias, self.fused)
      q, k, v = (along_sampling_weights(p, a) for p, a in zip(parts, logical))
    else:
      q, k, v = (along_sampling_weights(_dense(cfg, n, cfg.qkv_bias, name)(x), a)
                 for n, name, a in zip((h * dh, k_heads * dh, k_heads * dh),
                                       ("q_proj", "k_proj", "v_proj"), logical))
    q = constrain(q.reshape(b, t, h, dh), heads)
    k = constrain(k.reshape(b, t, k_heads, dh), kv_heads)
    v = constrain(v.reshape(b, t, k_heads, dh), kv_heads)
    q = apply_rope(q, sin, cos)
    k = apply_rope(k, sin, cos)
    if kv is None:
      # Dense scores for short chunks; blocked (no [T, S] scores) or a fused kernel otherwise.
      # The keys are this chunk at slots 0..T-1 (`chunk_only`): the kernel needs no on-device
      # fallback, whose switch would keep every branch's residuals under grad.
      out, new_kv = attention(q, k, v, slots, key_valid, segment_ids, segment_ids,
                              kv_block=self.attn_block, q_block=self.attn_block,
                              chunk_only=True), None
    else:
      # The stacked cache travels in the scan carry and is written in place: scanning it as
      # per-layer inputs/outputs instead would copy the whole cache on every decode step.
      # Attention then reads this layer's live key blocks straight out of the stacked cache.
      if len(kv) == 3:  # paged: through the block table, pages stay where they are
        table = kv[2]
        new_kv = (scatter_pages(kv[0], layer, table, slots, k),
                  scatter_pages(kv[1], layer, table, slots, v), table)
      else:
        table = None
        new_kv = (scatter_layer_rows(kv[0], layer, slots, k),
                  scatter_layer_rows(kv[1], layer, slots, v))
      # Rows without holes: a one-token step may use the paged kernel (`cached_attention`).
      lengths = slots[:, 0] + 1 if self.prefix_kv and t == 1 else None
      out = cached_attention(q, new_kv[0], new_kv[1], layer, slots, key_valid,
                             block=self.live_block, table=table, lengths=lengths)
    out = along_sampling_weights(constrain(out, heads).reshape(b, t, h * dh), "heads")
    # Sampling: the output whole on every chip (partial sums all-reduced, [rows, D]), as the
    # projections' inputs are (see Block).
    return constrain(along_sampling_weights(
        _dense(cfg, cfg.hidden_size, cfg.o_bias, "o_proj")(out), None), _X), new_kv


def _fused_proj(cfg: ModelConfig, x, name: str, use_bias: bool, groups: int):
  """A fused projection of the sampling copy (`aci_jax.model.fused`): x [..., D] -> its parts,
  each [..., N_part] and split over the chips as the part's own projection would be."""
  sizes = fusion.part_sizes(cfg, name)
  y = nn.DenseGeneral((groups, sum(sizes) // groups), use_bias=use_bias,
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, kernel_init=_INIT,
                      name=name)(x)
  return fusion.split(along_sampling_weights(y, "fused", axis=-2), sizes, groups)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  cfg: ModelConfig
  fused: int = 0  # G > 0: one grouped gate/up kernel (`aci_jax.model.fused`), the sampler's

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    hidden = ("batch", "length", "mlp")
    if self.fused:
      gate, up = (along_sampling_weights(p, "mlp")
                  for p in _fused_proj(cfg, x, "gate_up_proj", cfg.mlp_bias, self.fused))
    else:
      gate = _dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "gate_proj")(x)
      up = _dense(cfg, cfg.intermediate_size, cfg.mlp_bias, "up_proj")(x)
    gate, up = constrain(gate, hidden), constrain(up, hidden)
    # Sampling: whole on every chip, as o_proj's output (Attention).
    return constrain(along_sampling_weights(_dense(cfg, cfg.hidden_size, cfg.mlp_bias,
                                                   "down_proj")(nn.silu(gate) * up), None), _X)


class Block(nn.Module):
  """Pre-norm residual block, scanned over layers: ((x, kv), layer index, shared) ->
  ((x, kv), None), where kv is the whole stacked cache or None."""

  cfg: ModelConfig
  attn_block: int = 512
  live_block: int = 256
  prefix_kv: bool = False
  fused: int = 0

  @nn.compact
  def __call__(self, carry, layer, shared):
    x, kv = carry
    sin, cos, slots, key_valid, segment_ids = shared
    # Sampling pins each projection's [rows, D] input and output whole on every chip (one
    # all-gather / all-reduce of activations per projection; the residual stream between them
    # stays as the compiler likes it). Left to itself, with rows split over the same chips as
    # the weights (tensor=1), the TPU compiler turned the gather into a windowed loop that
    # re-read each chip's weight slice once per window: 3.1x the decode floor instead of 1.3x
    # (docs/tpu.md). A no-op in training (`along_sampling_weights`).
    attn_out, kv = Attention(self.cfg, self.attn_block, self.live_block, self.prefix_kv,
                             self.fused, name="attn")(
        along_sampling_weights(_norm(self.cfg, "attn_norm")(x), None), sin, cos, slots,
        key_valid, segment_ids, kv, layer)
    x = constrain(x + attn_out, _X)
    x = constrain(x + MLP(self.cfg, self.fused, name="mlp")(
        along_sampling_weights(_norm(self.cfg, "mlp_norm")(x), None)),
                  _X)
    return (x, kv), None


class LMHead(nn.Module):
  """Untied output projection, accumulated in float32 so bf16 runs keep precise log-probs."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, hidden):
    cfg = self.cfg
    w = self.param("kernel", _INIT, (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype)
    logits = jnp.einsum("...d,dv->...v", hidden, w.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)
    return _constrain_logits(logits)


def _constrain_logits(logits):
  if logits.ndim == 3:
    return constrain(logits, ("batch", "length", "vocab"))
  return logits


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Decoder(nn.Module):
  """Causal LM. See the module docstring for the parameter tree and the calling convention."""

  cfg: ModelConfig
  # Key/query block of the blocked attention path (long chunks); tests make it small.
  attn_block: int = 512
  # Key block of attention over the cache: reads stop at the block holding the longest row.
  live_block: int = 256
  # The caller's promise that every row's valid cache slots are those below its cursor (no
  # holes: the sampler's rows). One-token steps over a paged bf16 cache on TPU may then use
  # the Pallas paged-attention kernel (`aci_jax.model.live_attention.cached_attention`).
  prefix_kv: bool = False
  # Parameters one subtree per layer (`unstack_layers`) and the layers called in a Python loop,
  # instead of stacked [L, ...] and scanned. For sampling on a CPU: XLA's CPU dots need their
  # operands as whole buffers, so a scanned (or unrolled) layer's weights are first copied out
  # of the stacked array, every layer of every decode step: the step then moves each weight
  # three times (read, write, read). `for_params` picks the form a parameter tree has.
  unstacked: bool = False
  # G > 0: q/k/v and gate/up as one grouped matmul each (`aci_jax.model.fused.fuse`), the form
  # of the sampler's copy of the weights on a mesh; each layer's input is read once per fusion.
  fused: int = 0

  @classmethod
  def for_params(cls, cfg: ModelConfig, params, **kw) -> "Decoder":
    """The Decoder that reads `params` as they are: stacked or per layer (`unstack_layers`),
    separate or fused projections (`aci_jax.model.fused`)."""
    return cls(cfg, unstacked=LAYERS not in params, fused=fusion.groups_of(params), **kw)

  def setup(self):
    cfg = self.cfg
    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, prevent_cse=False, policy=_REMAT_POLICIES[cfg.remat])
    self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                          param_dtype=cfg.weight_dtype, embedding_init=_INIT)
    if self.unstacked:
      self.blocks = [block(cfg, self.attn_block, self.live_block, self.prefix_kv, self.fused,
                           name=layer_name(i)) for i in range(cfg.num_layers)]
    else:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast), length=cfg.num_layers)(cfg, self.attn_block,
                                                            self.live_block, self.prefix_kv,
                                                            self.fused)
    self.final_norm = _norm(cfg, "final_norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = LMHead(cfg)

  def __call__(self, tokens, positions, cache: KVCache | PagedKVCache | None = None, valid=None,
               advance=None, *, return_hidden: bool = False, segment_ids=None):
    """Runs T new tokens per row.

    Args:
      tokens: [B, T] int32 token ids.
      positions: [B, T] int32 RoPE positions (for left padding: the count of real tokens before).
      cache: None for a plain forward over the chunk, or a KVCache / PagedKVCache with room for
        T more slots per row after each row's cursor (paged: pages assigned up to there;
        tokens past a row's pages are dropped, see `PagedKVCache`).
      valid: [B, T] bool, False for padding; such tokens become holes nobody attends to.
      advance: [B] int32, how far each row's cursor moves (default T). A right-padded chunk may
        advance by each row's real length so the padding slots are reused by the next write.
      return_hidden: return final-norm hidden states [B, T, D] instead of logits (for chunked
        log-probabilities that never materialise [B, T, V]).
      segment_ids: [B, T] int32 or None; with several sequences packed into one row (training,
        no cache), a token attends only to earlier tokens of its own segment. Positions should
        restart at 0 in each segment.

    Returns:
      (logits [B, T, V] float32 or hidden [B, T, D], new cache or None).
    """
    b, t = tokens.shape
    if valid is None:
      valid = jnp.ones((b, t), jnp.bool_)
    x = constrain(self.embed(tokens), _X)
    sin, cos = rope_tables(self.cfg, positions)
    if cache is None:
      slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      key_valid, kv = valid, None
    else:
      slots = write_slots(cache.cursor, t)
      key_valid = scatter_rows(cache.valid, slots, valid)
      kv = ((cache.k, cache.v, cache.table) if isinstance(cache, PagedKVCache)
            else (cache.k, cache.v))
    if segment_ids is not None and cache is not None:
      raise ValueError("segment_ids (packed rows) are for cache-free forward passes only")
    # The attention mask (key valid, causal by slot, same segment) is built block by block
    # inside `attention` / `cached_attention` from these, never as a [B, T, S] array here.
    shared = (sin, cos, slots, key_valid, segment_ids)
    if self.unstacked:
      carry = (x, kv)
      for i, blk in enumerate(self.blocks):
        carry, _ = blk(carry, i, shared)
      x, new_kv = carry
    else:
      layer_ids = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
      (x, new_kv), _ = self.layers((x, kv), layer_ids, shared)
    x = self.final_norm(x)
    new_cache = None
    if cache is not None:
      step = jnp.full((b,), t, jnp.int32) if advance is None else advance.astype(jnp.int32)
      new_cache = cache.replace(k=new_kv[0], v=new_kv[1], valid=key_valid,
                                cursor=cache.cursor + step)
    if return_hidden:
      return x, new_cache
    return self.logits(x), new_cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., D] final hidden states -> [..., V] float32 logits (accumulated in float32)."""
    if self.cfg.tie_word_embeddings:
      w = self.embed.embedding.astype(self.cfg.compute_dtype)
      return _constrain_logits(jnp.einsum("...d,vd->...v", hidden, w,
                                          preferred_element_type=jnp.float32))
    return self.lm_head(hidden)


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
  """Random parameters (normal(0.02), norms at 1) — for models trained from scratch and tests."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Decoder(cfg).init(rng, tokens, tokens)["params"]


def param_shapes(cfg: ModelConfig) -> dict:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
  return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


LAYERS = "layers"  # the stacked layers' subtree of the parameter tree


def layer_name(i: int) -> str:
  """Layer i's subtree in an unstacked parameter tree (`unstack_layers`)."""
  return f"{LAYERS}_{i}"


def unstack_layers(params: dict) -> dict:
  """The same parameters with the stacked [L, ...] layer subtree split into one subtree per
  layer (`Decoder(unstacked=True)` reads this form; `Decoder.for_params` picks it). New arrays:
  a slice of the stacked leaves, so the stacked tree stays usable."""
  layers = params[LAYERS]
  n = jax.tree_util.tree_leaves(layers)[0].shape[0]
  out = {k: v for k, v in params.items() if k != LAYERS}
  for i in range(n):
    out[layer_name(i)] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
  return out


def positions_from_valid(valid: jax.Array, start=None) -> jax.Array:
  """[B, T] RoPE positions for a possibly left-padded chunk: real tokens count 0, 1, 2, ...

  `start` [B] offsets each row (the number of real tokens already in its cache). Padding gets
  the position of the next real token (any value works: padding is never attended to).
  """
  pos = jnp.cumsum(valid.astype(jnp.int32), axis=1) - valid.astype(jnp.int32)
  if start is not None:
    pos = pos + start[:, None]
  return pos
