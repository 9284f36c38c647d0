"""The compiled half of tool-integrated sampling: extend (prefill), decode loop, row reset.

Every function here is pure: `(params, state, ...) -> state`, jitted with the state donated so
the KV cache and buffers are updated in place. The host loop (`aci_jax.rollout`) decides what
to splice where; nothing here blocks on the host.

Per row b the state holds (B rows, R response slots, V vocab):
  cache        KVCache or PagedKVCache (the engine's), one cursor per row
  logits       [B, V] f32  next-token logits after the last token written to the row
  out_tokens   [B, R] i32  response tokens (sampled, forced prefix, tool output)
  out_logp     [B, R] f32  behaviour log-prob of each response token: log_softmax(logits) of
                           the policy itself (T = 1, no ban, no top-k/top-p), the quantity the
                           trainer scores, so rho = 1 at theta_old (docs/em.md)
  out_src      [B, R] i8   SRC_SAMPLED / SRC_FORCED / SRC_ENV
  n_out        [B]    i32  response tokens recorded
  n_real       [B]    i32  real tokens in the row = the RoPE position of the next token
  status       [B]    i32  RUNNING / PAUSED (for a tool) / DONE / EMPTY / WAITING (for
                           KV pages: its cursor reached its last assigned page)
  reason       [B]    i32  why a row stopped: REASON_*
  stop_state, ban_state [B] i32   string-automaton states (see stops.py)
  ban_active   [B]    bool  whether the row's banned strings apply (forced reasoning mode)
  max_out      [B]    i32  response budget per row (<= R)
  keys         [B, 2] u32  per-row key data from (seed, prompt index, sample index)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from aci_jax.model import Decoder, KVCache, ModelConfig, PagedKVCache
from aci_jax.model.attention import along_sampling_weights
from aci_jax.parallel.rules import ROW_AXES, SAMPLING_RULES, spec_for
from aci_jax.train.logprobs import chunked_logprobs, target_logprobs

RUNNING, PAUSED, DONE, EMPTY, WAITING = 0, 1, 2, 3, 4
SRC_SAMPLED, SRC_FORCED, SRC_ENV = 0, 1, 2
REASON_NONE, REASON_TOOL, REASON_EOS, REASON_STOP, REASON_LENGTH = 0, 1, 2, 3, 4
REASON_NAMES = {REASON_NONE: "none", REASON_TOOL: "tool", REASON_EOS: "eos",
                REASON_STOP: "stop", REASON_LENGTH: "length"}
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling settings (a change recompiles)."""

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  greedy: bool = False

  def __post_init__(self):
    if not self.greedy and not self.temperature > 0:
      raise ValueError(f"temperature must be > 0 (or greedy=True), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@struct.dataclass
class Tables:
  """Device copies of the string automata and stop ids (arguments, not constants, so a new
  tokenizer or stop list does not recompile)."""

  stop_next: jax.Array  # [Ss, V] i32
  stop_hit: jax.Array  # [Ss, V] i32, pattern id (1-based) or 0
  stop_is_tool: jax.Array  # [P + 1] bool, indexed by pattern id; False at 0
  ban_next: jax.Array  # [Sb, V] i32
  ban_hit: jax.Array  # [Sb, V] bool: the token is banned there (stops.ban_table); a byte per
  # entry, since each decode step gathers a [B, V] row of it
  eos_ids: jax.Array  # [E] i32 (padded with -1)


@struct.dataclass
class SamplerState:
  cache: KVCache
  logits: jax.Array
  out_tokens: jax.Array
  out_logp: jax.Array
  out_src: jax.Array
  n_out: jax.Array
  n_real: jax.Array
  status: jax.Array
  reason: jax.Array
  stop_state: jax.Array
  ban_state: jax.Array
  ban_active: jax.Array
  max_out: jax.Array
  keys: jax.Array

  @property
  def batch(self) -> int:
    return self.n_out.shape[0]

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, capacity: int, max_out: int, *,
           page_size: int = 0, pages_per_group: int = 0, groups: int = 1) -> "SamplerState":
    """page_size 0: a contiguous `KVCache` of `capacity` slots per row; otherwise a
    `PagedKVCache` of `groups` x `pages_per_group` pages of `page_size` slots."""
    cache = (PagedKVCache.init(cfg, batch, capacity, page_size, pages_per_group, groups)
             if page_size else KVCache.init(cfg, batch, capacity))
    return cls(
        cache=cache,
        logits=jnp.zeros((batch, cfg.vocab_size), jnp.float32),
        out_tokens=jnp.zeros((batch, max_out), jnp.int32),
        out_logp=jnp.zeros((batch, max_out), jnp.float32),
        out_src=jnp.zeros((batch, max_out), jnp.int8),
        n_out=jnp.zeros((batch,), jnp.int32),
        n_real=jnp.zeros((batch,), jnp.int32),
        status=jnp.full((batch,), EMPTY, jnp.int32),
        reason=jnp.zeros((batch,), jnp.int32),
        stop_state=jnp.zeros((batch,), jnp.int32),
        ban_state=jnp.zeros((batch,), jnp.int32),
        ban_active=jnp.zeros((batch,), jnp.bool_),
        max_out=jnp.full((batch,), max_out, jnp.int32),
        keys=jnp.zeros((batch, 2), jnp.uint32),
    )


def row_key(seed: int, prompt_index: int, sample_index: int) -> jax.Array:
  """[2] uint32 key data: depends only on (seed, prompt, sample), not on batch or row."""
  k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), prompt_index), sample_index)
  return jax.random.key_data(k)


@jax.jit
def row_keys(seed, prompt_index, sample_index) -> jax.Array:
  """`row_key` for many rows in one dispatch: [N] i32 indices -> [N, 2] u32."""
  return jax.vmap(row_key, in_axes=(None, 0, 0))(seed, prompt_index, sample_index)


# ------------------------------------------------------------------------------ sampling


def sample_tokens(keys: jax.Array, logits: jax.Array, sp: SamplingParams,
                  banned: jax.Array | None = None):
  """keys [B, 2] u32 (already folded with the token index), logits [B, V] f32, banned [B, V]
  bool or None -> (tokens [B] i32, behaviour log-probs [B] f32).

  The token is drawn from the policy at `sp.temperature`, with `banned` tokens masked and
  top-k / top-p applied; its behaviour log-prob is that of the policy itself,
  log_softmax(logits) at T = 1 over the whole vocabulary, computed by the trainer's own
  function (`target_logprobs`), so the ratio at theta_old is 1 (the convention of docs/em.md).
  """
  policy = logits
  if banned is not None:
    logits = jnp.where(banned, _NEG, logits)
  if sp.greedy:
    tok = first_argmax(logits)
    return tok, target_logprobs(policy, tok)[0]
  scaled = logits / sp.temperature
  filtered = scaled
  if sp.top_k:
    kth = jax.lax.top_k(scaled, sp.top_k)[0][:, -1:]
    filtered = jnp.where(scaled < kth, _NEG, filtered)
  if sp.top_p < 1.0:
    # Keep the smallest set of most likely tokens whose mass reaches top_p (the first token is
    # always kept): a token stays if the mass strictly before it is below top_p.
    srt = jnp.sort(filtered, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < sp.top_p
    threshold = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where(filtered < threshold, _NEG, filtered)
  # `jax.random.categorical`'s own draw (Gumbel-max with the row's key), token for token.
  noise = jax.vmap(lambda k: jax.random.gumbel(jax.random.wrap_key_data(k),
                                                filtered.shape[-1:], filtered.dtype))(keys)
  tok = first_argmax(noise + filtered)
  return tok, target_logprobs(policy, tok)[0]


def first_argmax(x: jax.Array) -> jax.Array:
  """[B, V] -> [B] int32: the first index of each row's maximum, as `jnp.argmax` (for values
  that are not NaN). Written as a max and a min over indices where the max is reached: with
  the vocabulary split over chips, `jnp.argmax`'s reduction made the TPU compiler build its
  [B, V] index array split by rows and move it to the vocabulary split at every decode step
  (0.08 GB per chip per step for Qwen2.5-7B on v5p-16); here the indices are computed inside
  the reduction and only [B] values cross chips."""
  m = jnp.max(x, axis=-1, keepdims=True)
  idx = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == m, idx, x.shape[-1]), axis=-1).astype(jnp.int32)


def _fold_keys(keys: jax.Array, index: jax.Array) -> jax.Array:
  return jax.vmap(lambda k, i: jax.random.key_data(
      jax.random.fold_in(jax.random.wrap_key_data(k), i)))(keys, index)


# ------------------------------------------------------------------------------ decode loop


def _logits(cfg: ModelConfig, params, hidden: jax.Array) -> jax.Array:
  """[B, T, D] final hidden states -> [B, T, V] float32 logits, every row against each chip's
  slice of the vocabulary (`along_sampling_weights`), then resharded to the state's rows.
  Left to itself the compiler all-gathers the whole output projection onto every chip at every
  decode step to compute its own rows' logits (Qwen2.5-7B on v5p-16: 0.4 GB per chip per step
  at tensor 2, 0.95 GB at tensor 1), where this moves [B, V / chips] logits. The hidden states
  are gathered whole first: otherwise the compiler may pass the rows around the ring and
  multiply each piece by the whole projection slice, reading it from HBM once per piece
  (8x at tensor 1)."""
  hidden = along_sampling_weights(hidden, None)
  logits = Decoder.for_params(cfg, params).apply({"params": params}, hidden,
                                                 method=Decoder.logits)
  return along_sampling_weights(logits, "vocab")


def _decode_step(cfg: ModelConfig, sp: SamplingParams, params, tables: Tables,
                 s: SamplerState) -> SamplerState:
  running = s.status == RUNNING
  # A row whose next slot has no page (paged cache, pool short) waits for the host to give it
  # one (`set_pages`) instead of sampling: nothing of it changes, so its tokens, keys and
  # log-probs are those it would have had. A row at `capacity` samples its last token as ever.
  stalled = running & (s.cache.cursor >= s.cache.limit) & (s.cache.cursor < s.cache.capacity)
  running &= ~stalled
  # [B, V]: tokens that would complete a banned string or leave the text ending in a prefix
  # of one (stops.ban_table). A row whose every token is banned is never left without one:
  # the ban is lifted for that token (cannot happen with the default ban; a guard).
  banned = s.ban_active[:, None] & tables.ban_hit[s.ban_state].astype(jnp.bool_)
  banned &= ~jnp.all(banned, axis=-1, keepdims=True)
  # Each row's key on every chip (a few bytes), so the random bits of the draw are made where
  # the row's logits are, split by vocabulary (`state_shardings`), not made split by rows and
  # moved to them.
  keys = along_sampling_weights(_fold_keys(s.keys, s.n_out), None)
  tok, logp = sample_tokens(keys, s.logits, sp, banned)
  r = s.out_tokens.shape[1]
  slot = jnp.where(running, s.n_out, r)  # non-running rows write nowhere (dropped)
  rows = jnp.arange(s.batch)
  out_tokens = s.out_tokens.at[rows, slot].set(tok, mode="drop")
  out_logp = s.out_logp.at[rows, slot].set(logp, mode="drop")
  out_src = s.out_src.at[rows, slot].set(SRC_SAMPLED, mode="drop")
  n_out = s.n_out + running
  hit = tables.stop_hit[s.stop_state, tok]
  stop_state = jnp.where(running, tables.stop_next[s.stop_state, tok], s.stop_state)
  ban_state = jnp.where(running, tables.ban_next[s.ban_state, tok], s.ban_state)
  is_eos = jnp.any(tok[:, None] == tables.eos_ids[None, :], axis=-1)
  is_tool = (hit > 0) & tables.stop_is_tool[hit]
  is_stop = (hit > 0) & ~tables.stop_is_tool[hit]
  n_real = s.n_real + running
  full = (n_out >= s.max_out) | (s.cache.cursor + running >= s.cache.capacity)
  reason = jnp.select([is_eos, is_stop, is_tool, full],
                      [REASON_EOS, REASON_STOP, REASON_TOOL, REASON_LENGTH], REASON_NONE)
  new_status = jnp.where(reason == REASON_TOOL, PAUSED,
                         jnp.where(reason == REASON_NONE, RUNNING, DONE))
  status = jnp.where(running, new_status, jnp.where(stalled, WAITING, s.status))
  reason = jnp.where(running, reason, s.reason)
  # Feed the sampled token to every row that sampled one (a paused row needs its fence token
  # in the cache before the tool output is appended); other rows write at their cursor
  # without advancing, so no row has holes (extend right-pads too): `prefix_kv`.
  hidden, cache = Decoder.for_params(cfg, params, prefix_kv=True).apply(
      {"params": params}, tok[:, None], s.n_real[:, None], s.cache, running[:, None],
      running.astype(jnp.int32), return_hidden=True)
  logits = jnp.where(running[:, None], _logits(cfg, params, hidden)[:, 0], s.logits)
  return s.replace(cache=cache, logits=logits, out_tokens=out_tokens, out_logp=out_logp,
                   out_src=out_src, n_out=n_out, n_real=n_real, status=status, reason=reason,
                   stop_state=stop_state, ban_state=ban_state)


@functools.partial(jax.jit, static_argnames=("cfg", "sp", "max_steps", "exit_on_pause"),
                   donate_argnums=(2,))
def decode(cfg: ModelConfig, sp: SamplingParams, state: SamplerState, params, tables: Tables,
           max_steps: int, exit_on_pause: bool = True):
  """Decodes until no row is RUNNING, or `max_steps` steps ran, or (with `exit_on_pause`) a
  row paused for a tool or started waiting for KV pages, so the host can start that cell or
  give pages while the others keep decoding in the next call. Returns (state, steps taken)."""
  paused0 = jnp.sum(state.status == PAUSED)
  waiting0 = jnp.sum(state.status == WAITING)

  def cond(carry):
    s, i = carry
    go = (i < max_steps) & jnp.any(s.status == RUNNING)
    if exit_on_pause:
      go &= (jnp.sum(s.status == PAUSED) == paused0) & (jnp.sum(s.status == WAITING) == waiting0)
    return go

  def body(carry):
    s, i = carry
    return _decode_step(cfg, sp, params, tables, s), i + 1

  return jax.lax.while_loop(cond, body, (state, jnp.int32(0)))


def state_shardings(state: SamplerState, mesh):
  """Rows of every state array over the mesh's data-parallel axes (the KV cache has its
  layer axis first, its row axis second, and its kv heads over `tensor` when they divide, as
  the attention that reads it is split: a cache replicated over `tensor` is held twice). A
  paged pool [G, K, L, P, N, Dh] is split by its groups over the same axes (one group per
  shard of rows: `page_groups`) and its kv heads likewise."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  rows = ROW_AXES

  def one(x):
    if x.ndim == 5:
      heads = "tensor" if x.shape[3] % mesh.shape["tensor"] == 0 else None
      return NamedSharding(mesh, P(None, rows, None, heads, None))
    if x.ndim == 6:
      heads = "tensor" if x.shape[1] % mesh.shape["tensor"] == 0 else None
      return NamedSharding(mesh, P(rows, heads, None, None, None, None))
    return NamedSharding(mesh, P(rows, *([None] * (x.ndim - 1))))

  out = jax.tree_util.tree_map(one, state)
  # The next-token logits [B, V] as `_logits` computes them: every row whole, the vocabulary
  # split as the sampling copy of the output projection splits it. Kept by rows instead, each
  # step would move them between chips and re-tile them (Qwen2.5-7B on v5p-16: 0.08 GB per
  # chip per step, docs/tpu.md); sampling reads each chip's slice once and reduces across
  # chips only [B] maxima and sums.
  vocab = spec_for(state.logits.shape, (None, "vocab"), mesh, SAMPLING_RULES)
  return out.replace(logits=NamedSharding(mesh, vocab))


# ----------------------------------------------------------------------- extend / prefill


def _chunk_logp(cfg, params, hidden, first_logits, tokens, block):
  """log-probs [B, T] of each chunk token under the policy (T = 1, as `sample_tokens` records),
  from the logits of the position before it: the trainer's own routine (`chunked_logprobs`),
  `block` positions at a time so [B, T, V] is never materialised."""
  b, _, d = hidden.shape
  # Position j's token is predicted by hidden j-1; position 0 by the stored logits.
  prev_hidden = jnp.concatenate([jnp.zeros((b, 1, d), hidden.dtype), hidden[:, :-1]], axis=1)

  def head(h):
    return Decoder.for_params(cfg, params).apply({"params": params}, h,
                                                 method=Decoder.logits)

  # No gradient flows here, so nothing to rematerialise; the unused entropy is dead code to XLA.
  logp, _ = chunked_logprobs(head, prev_hidden, tokens, block, remat=False)
  return logp.at[:, 0].set(target_logprobs(first_logits, tokens[:, 0])[0])


@functools.partial(jax.jit, static_argnames=("cfg", "record", "logp_block"),
                   donate_argnums=(1,))
def extend(cfg: ModelConfig, state: SamplerState, params, tables: Tables, tokens, valid,
           src, resume, *, record: bool, logp_block: int = 16):
  """Appends a right-padded chunk to each row at the row's own cursor.

  Args:
    tokens, valid: [B, T]; each row's real tokens come first (right padding). Rows with no
      valid token are untouched.
    src: [B] i8 source tag of the chunk (SRC_FORCED for a response prefix, SRC_ENV for tool
      output); ignored when `record` is False (prompts: not part of the response).
    resume: [B] bool, rows that are RUNNING afterwards (others keep their status).
    record: static; append the chunk to the response buffers with log-probs (the policy's own,
      T = 1: a forced prefix is recorded as if the policy had written it, docs/em.md).
  """
  n = jnp.sum(valid, axis=1, dtype=jnp.int32)
  has = n > 0
  positions = state.n_real[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)
  hidden, cache = Decoder.for_params(cfg, params).apply(
      {"params": params}, tokens, positions, state.cache, valid, n, return_hidden=True)
  last = jnp.take_along_axis(hidden, jnp.maximum(n - 1, 0)[:, None, None], axis=1)
  new_logits = _logits(cfg, params, last)[:, 0]
  logits = jnp.where(has[:, None], new_logits, state.logits)
  out = dict(cache=cache, logits=logits, n_real=state.n_real + n)
  if record:
    t = tokens.shape[1]
    blk = logp_block if t % logp_block == 0 else t
    logp = _chunk_logp(cfg, params, hidden, state.logits, tokens, blk)
    r = state.out_tokens.shape[1]
    idx = state.n_out[:, None] + jnp.arange(t, dtype=jnp.int32)
    idx = jnp.where(valid, idx, r)  # padding writes nowhere
    rows = jnp.arange(state.batch)[:, None]
    out.update(
        out_tokens=state.out_tokens.at[rows, idx].set(tokens, mode="drop"),
        out_logp=state.out_logp.at[rows, idx].set(logp, mode="drop"),
        out_src=state.out_src.at[rows, idx].set(
            jnp.broadcast_to(src[:, None], tokens.shape).astype(jnp.int8), mode="drop"),
        n_out=jnp.minimum(state.n_out + n, r))

    # Run the string automata over the chunk so a pattern split across a forced prefix and
    # the next sampled token is still seen; hits inside the chunk itself are ignored (a tool
    # output may legitimately print the fence).
    def walk(carry, col):
      st, bt = carry
      tk, v = col
      st = jnp.where(v, tables.stop_next[st, tk], st)
      bt = jnp.where(v, tables.ban_next[bt, tk], bt)
      return (st, bt), None

    (stop_state, ban_state), _ = jax.lax.scan(walk, (state.stop_state, state.ban_state),
                                              (tokens.T, valid.T))
    out.update(stop_state=stop_state, ban_state=ban_state)
  status = jnp.where(resume, RUNNING, state.status)
  reason = jnp.where(resume, REASON_NONE, state.reason)
  return state.replace(status=status, reason=reason, **out)


@functools.partial(jax.jit, donate_argnums=(0,))
def reset_rows(state: SamplerState, rows, keys, max_out, ban_active) -> SamplerState:
  """Empties the rows where `rows` [B] is True for a new prompt: cache slots invalid, cursor
  and counters at 0, new per-row key, response budget and ban flag."""
  cache = state.cache.clear_rows(rows)
  z = lambda x: jnp.where(rows, 0, x)
  return state.replace(
      cache=cache, n_out=z(state.n_out), n_real=z(state.n_real),
      status=jnp.where(rows, EMPTY, state.status), reason=z(state.reason),
      stop_state=z(state.stop_state), ban_state=z(state.ban_state),
      ban_active=jnp.where(rows, ban_active, state.ban_active),
      max_out=jnp.where(rows, max_out, state.max_out),
      keys=jnp.where(rows[:, None], keys, state.keys))


def page_groups(mesh) -> int:
  """Page groups of a paged cache on `mesh`: one per data-parallel shard of the rows (1
  without a mesh)."""
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


@functools.partial(jax.jit, donate_argnums=(0,))
def set_pages(state: SamplerState, table) -> SamplerState:
  """The paged cache with the host's block table [B, M] (`rollout.pages.PagePool`); a WAITING
  row that now has a page for its next slot runs again."""
  cache = state.cache.replace(table=table)
  wake = (state.status == WAITING) & (cache.cursor < cache.limit)
  return state.replace(cache=cache, status=jnp.where(wake, RUNNING, state.status))


@functools.partial(jax.jit, donate_argnums=(0,))
def clear_cache_rows(state: SamplerState, rows) -> SamplerState:
  """Forgets the KV cache of the rows where `rows` [B] is True but keeps their response
  buffers: the "re-prefill the whole conversation after every tool call" baseline."""
  cache = state.cache.clear_rows(rows)
  return state.replace(cache=cache, n_real=jnp.where(rows, 0, state.n_real))
