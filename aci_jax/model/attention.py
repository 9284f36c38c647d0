"""Grouped-query attention with a general mask, without [T, S] score tensors for long inputs.

The mask is the decoder's: query t may attend key slot s when

    key_valid[b, s]  and  s <= q_slot[b, t]  and  q_seg[b, t] == k_seg[b, s]

(per-row validity for padding holes, causal order by cache slot, packing segments). Two paths
compute the same function:

- `dense_attention`: the whole [B, K, G, T, S] float32 score tensor, then softmax. Cheapest for
  short inputs and for one-token decode steps (T = 1: the scores are [S] per head).
- `blocked_attention`: flash-attention's online softmax over key blocks of `kv_block` slots,
  queries in blocks of `q_block`, with a custom VJP whose backward pass recomputes each block
  from the saved log-sum-exp: memory O(q_block x kv_block) per head instead of O(T x S), in
  the forward and the backward pass alike. Pure JAX, so it runs (and compiles for TPU) on every
  backend.

Two backend kernels compute it too, for the inputs their masks can express, and hand the rest
to the blocked path on device (`aci_jax/model/kernels/`):

- `pallas`: JAX's Pallas TPU splash attention (`kernels/splash.py`): training and scoring
  chunks (slots 0..T-1, packed segments, padding holes) and extends at per-row cursors over a
  cache with holes. The TPU compiler cannot partition a Pallas kernel, so it runs inside a
  `shard_map` over the batch and head axes of the mesh named by `activation_sharding` (the
  train step) or `kernel_mesh` (other callers). Off TPU it runs in Pallas's interpreter.
- `cudnn`: `jax.nn.dot_product_attention` (`kernels/cudnn.py`): bf16/f16 chunks over
  themselves with right padding only; packing, holes, extends and float32 use the fallback.
  Off GPU it runs the same call through XLA (`implementation="xla"`, tests).

`attention` picks (`impl="auto"`, the default): dense when the scores are small (T < 16 or
S <= kv_block); otherwise, by the platform the program is compiled for
(`lax.platform_dependent`, so an ahead-of-time TPU compile on a CPU host gets the TPU path):
`pallas` on TPU when a mesh is named (else `blocked`), `cudnn` on GPU, `blocked` elsewhere.
`impl` (or the `attention_impl` context, for callers that cannot pass it, such as the
decoder's call site) forces one of "dense", "blocked", "pallas", "cudnn".

A fully masked query row (a padding token) gets finite garbage in every path (the mean of the
values, as a softmax over equal scores gives); nothing reads those rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from aci_jax.model.kernels.cudnn import cudnn_attention
from aci_jax.model.kernels.splash import splash_attention
from aci_jax.parallel import rules as sharding_rules

MASKED = float(jnp.finfo(jnp.float32).min)  # finite, so a fully masked row gives no NaN


def online_softmax_step(m, l, acc, scores, v):
  """One key block of flash attention's online softmax. scores [B, K, G, T, S] f32 (masked
  entries at MASKED), v [B, S, K, Dh]; (m, l, acc) the running max [B, K, G, T], normaliser
  [B, K, G, T] and unnormalised output [B, K, G, T, Dh], all f32. Returns the updated triple."""
  m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
  corr = jnp.exp(m - m_new)
  p = jnp.exp(scores - m_new[..., None])
  l = l * corr + jnp.sum(p, axis=-1)
  acc = acc * corr[..., None] + jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), v,
                                           preferred_element_type=jnp.float32)
  return m_new, l, acc


def _mask(q_slot, q_seg, key_valid, k_seg, k_slot):
  """[B, T, S'] bool for key slots `k_slot` [S'] (block of the key axis)."""
  m = key_valid[:, None, :] & (k_slot[None, None, :] <= q_slot[:, :, None])
  if q_seg is not None:
    m = m & (q_seg[:, :, None] == k_seg[:, None, :])
  return m


def _dense(q, k, v, q_slot, key_valid, q_seg, k_seg, *, head_major: bool):
  b, t, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  qg = q.reshape(b, t, kh, h // kh, dh)
  mask = _mask(q_slot, q_seg, key_valid, k_seg, jnp.arange(s, dtype=jnp.int32))
  if head_major:  # [B, K, G, T, Dh] and [B, K, S, Dh]: each (row, head) one contiguous matrix
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4))
    k, v = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))
  q_spec, kv_spec = ("bkgtd", "bksd") if head_major else ("btkgd", "bskd")
  scores = jnp.einsum(f"{q_spec},{kv_spec}->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = jnp.where(mask[:, None, None, :, :], scores * (dh ** -0.5), MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum(f"bkgts,{kv_spec}->{q_spec}", probs, v)
  if head_major:
    out = jnp.transpose(out, (0, 3, 1, 2, 4))
  return out.reshape(b, t, h, dh)


def dense_attention(q, k, v, q_slot, key_valid, q_seg=None, k_seg=None):
  """q [B, T, H, Dh], k/v [B, S, K, Dh], q_slot [B, T] i32, key_valid [B, S] bool, segments
  [B, T] / [B, S] i32 or None -> [B, T, H, Dh] in v's dtype."""
  # XLA's CPU backend runs the batched [T, Dh] x [Dh, S] products and their gradients on the
  # operands' own strided layout: with heads moved in front of the sequence axes first, the
  # forward and backward pass is 1.4-1.6x faster at the toy's training shape and the whole
  # warm-up step ~10% (benchmarks/bench_attention_cpu.py, docs/benchmarks.md). The TPU
  # compiler lays the einsum out itself and the explicit transposes cost it bytes at long T
  # (+23% accessed at T = 1024), so only the CPU program takes them.
  return jax.lax.platform_dependent(
      q, k, v, q_slot, key_valid, q_seg, k_seg,
      cpu=functools.partial(_dense, head_major=True),
      default=functools.partial(_dense, head_major=False))


# ------------------------------------------------------------------------ blocked path


def _blocks(x, n, axis=1):
  """Split `axis` into n blocks and move the block index to the front."""
  shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis=1):
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _fwd_qblock(qg, kb, vb, q_slot, q_seg, kvalid_b, kseg_b, kslot_b, scale):
  """One query block against all key blocks. qg [B, Tq, K, G, Dh]; kb/vb [N, B, Bk, K, Dh].
  Returns (out [B, K, G, Tq, Dh] f32, lse [B, K, G, Tq] f32)."""
  b, tq, kh, g, dh = qg.shape

  def step(carry, blk):
    m, l, acc = carry
    kk, vv, kvalid, kseg, kslot = blk
    s = jnp.einsum("btkgd,bskd->bkgts", qg, kk, preferred_element_type=jnp.float32) * scale
    mask = _mask(q_slot, q_seg, kvalid, kseg, kslot)[:, None, None]
    s = jnp.where(mask, s, MASKED)
    return online_softmax_step(m, l, acc, s, vv), None

  init = (jnp.full((b, kh, g, tq), -jnp.inf, jnp.float32), jnp.zeros((b, kh, g, tq), jnp.float32),
          jnp.zeros((b, kh, g, tq, dh), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, kvalid_b, kseg_b, kslot_b))
  return acc / l[..., None], m + jnp.log(l)


def _prep(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block, kv_block):
  b, t, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  nq, nk = t // q_block, s // kv_block
  qg = q.reshape(b, t, kh, h // kh, dh)
  if q_seg is None:  # one segment everywhere: the same code path, a mask term that is all true
    q_seg = jnp.zeros((b, t), jnp.int32)
    k_seg = jnp.zeros((b, s), jnp.int32)
  kslot = jnp.arange(s, dtype=jnp.int32)
  keys = (_blocks(k, nk), _blocks(v, nk), _blocks(key_valid, nk), _blocks(k_seg, nk),
          kslot.reshape(nk, kv_block))
  queries = (_blocks(qg, nq), _blocks(q_slot, nq), _blocks(q_seg, nq))
  return keys, queries, dh ** -0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _blocked(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block, kv_block):
  return _blocked_fwd(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block, kv_block)[0]


def _blocked_fwd(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block, kv_block):
  keys, (qb, slot_b, seg_b), scale = _prep(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block,
                                           kv_block)
  kb, vb, kvalid_b, kseg_b, kslot_b = keys

  def one(args):
    qq, slot, seg = args
    return _fwd_qblock(qq, kb, vb, slot, seg, kvalid_b, kseg_b, kslot_b, scale)

  out, lse = jax.lax.map(one, (qb, slot_b, seg_b))  # [Nq, B, K, G, Tq, Dh], [Nq, B, K, G, Tq]
  b, t, h, dh = q.shape
  o = jnp.moveaxis(out, 0, 3)  # [B, K, G, Nq, Tq, Dh]
  o = o.reshape(b, o.shape[1], o.shape[2], t, dh)  # [B, K, G, T, Dh]
  result = jnp.transpose(o, (0, 3, 1, 2, 4)).reshape(b, t, h, dh).astype(v.dtype)
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, o.shape[1], o.shape[2], t)
  return result, (q, k, v, q_slot, key_valid, q_seg, k_seg, result, lse)


def _blocked_bwd(q_block, kv_block, res, d_out):
  q, k, v, q_slot, key_valid, q_seg, k_seg, out, lse = res
  b, t, h, dh = q.shape
  kh = k.shape[2]
  g = h // kh
  keys, (qb, slot_b, seg_b), scale = _prep(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block,
                                           kv_block)
  kb, vb, kvalid_b, kseg_b, kslot_b = keys
  nq = t // q_block
  # Per query: delta = sum_d dO * O (the softmax-backward correction), in float32.
  do = d_out.reshape(b, t, kh, g, dh).astype(jnp.float32)
  o = out.reshape(b, t, kh, g, dh).astype(jnp.float32)
  delta = jnp.transpose(jnp.sum(do * o, axis=-1), (0, 2, 3, 1))  # [B, K, G, T]
  do_b = _blocks(do, nq)  # [Nq, B, Tq, K, G, Dh]
  delta_b = _blocks(delta, nq, axis=3)  # [Nq, B, K, G, Tq]
  lse_b = _blocks(lse, nq, axis=3)

  def per_q(carry, args):
    dk_acc, dv_acc = carry  # [Nk, B, Bk, K, Dh] f32
    qq, slot, seg, dd, dl, ls = args

    def per_k(dq, blk):
      kk, vv, kvalid, kseg, kslot = blk
      s = jnp.einsum("btkgd,bskd->bkgts", qq, kk, preferred_element_type=jnp.float32) * scale
      mask = _mask(slot, seg, kvalid, kseg, kslot)[:, None, None]
      s = jnp.where(mask, s, MASKED)
      p = jnp.exp(s - ls[..., None])  # the forward's probabilities, recomputed
      dv = jnp.einsum("bkgts,btkgd->bskd", p, dd)
      dp = jnp.einsum("btkgd,bskd->bkgts", dd, vv.astype(jnp.float32))
      ds = jnp.where(mask, p * (dp - dl[..., None]), 0.0) * scale
      dq = dq + jnp.einsum("bkgts,bskd->btkgd", ds, kk.astype(jnp.float32))
      dk = jnp.einsum("bkgts,btkgd->bskd", ds, qq.astype(jnp.float32))
      return dq, (dk, dv)

    dq0 = jnp.zeros(qq.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(per_k, dq0, (kb, vb, kvalid_b, kseg_b, kslot_b))
    return (dk_acc + dk, dv_acc + dv), dq

  zeros = jnp.zeros(kb.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(per_q, (zeros, zeros), (qb, slot_b, seg_b, do_b, delta_b, lse_b))
  dq = _unblocks(dq).reshape(b, t, h, dh).astype(q.dtype)
  dk = _unblocks(dk).astype(k.dtype)
  dv = _unblocks(dv).astype(v.dtype)
  return dq, dk, dv, None, None, None, None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(q, k, v, q_slot, key_valid, q_seg=None, k_seg=None, *,
                      q_block: int = 512, kv_block: int = 512):
  """`dense_attention` computed block by block (see module docstring). Pads T and S up to
  whole blocks (padded keys are invalid, padded queries are dropped)."""
  b, t, h, dh = q.shape
  s = k.shape[1]
  q_block = min(q_block, t)
  kv_block = min(kv_block, s)
  pt, ps = -t % q_block, -s % kv_block
  if pt:
    q = jnp.pad(q, ((0, 0), (0, pt), (0, 0), (0, 0)))
    q_slot = jnp.pad(q_slot, ((0, 0), (0, pt)))
    if q_seg is not None:
      q_seg = jnp.pad(q_seg, ((0, 0), (0, pt)))
  if ps:
    k = jnp.pad(k, ((0, 0), (0, ps), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, ps), (0, 0), (0, 0)))
    key_valid = jnp.pad(key_valid, ((0, 0), (0, ps)))
    if k_seg is not None:
      k_seg = jnp.pad(k_seg, ((0, 0), (0, ps)))
  out = _blocked(q, k, v, q_slot, key_valid, q_seg, k_seg, q_block, kv_block)
  return out[:, :t]


# ------------------------------------------------------------------------ dispatch

IMPLS = ("auto", "dense", "blocked", "pallas", "cudnn")
_IMPL: contextvars.ContextVar = contextvars.ContextVar("aci_attention_impl", default="auto")


@contextlib.contextmanager
def attention_impl(name: str):
  """While tracing inside this context, `attention` calls without `impl` use `name`."""
  if name not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {name!r}")
  token = _IMPL.set(name)
  try:
    yield
  finally:
    _IMPL.reset(token)


_MESH: contextvars.ContextVar = contextvars.ContextVar("aci_attention_mesh", default=None)


@contextlib.contextmanager
def kernel_mesh(mesh, rules=sharding_rules.ACTIVATION_RULES):
  """While tracing inside this context, Pallas attention runs in a shard_map over `mesh`
  (batch and heads split as `rules` map the logical axes "batch", "heads", "kv_heads"). The
  train step's `activation_sharding` does the same; a caller outside it (the sampler) opts in
  here, since the TPU compiler cannot partition a Pallas kernel by itself and the mesh is not
  visible from inside a traced function."""
  token = _MESH.set((mesh, rules))
  try:
    yield
  finally:
    _MESH.reset(token)


def along_sampling_weights(x: jax.Array, logical: str | None, axis: int = -1) -> jax.Array:
  """`x` [..., N] with its last dimension split as the sampling copy of the weights splits the
  logical axis `logical` (`SAMPLING_RULES`: heads / kv heads / MLP / vocabulary over tensor,
  then fsdp; None: whole) and every other dimension whole, while the sampler traces under
  `kernel_mesh`; unchanged otherwise (training pins its activations with
  `activation_sharding`). `axis`: the dimension split, if not the last (the group axis of a
  fused projection's output, `aci_jax.model.fused`). Pinning a projection's flat input or
  output this way keeps its matmul on each chip's own slice of the weight: left to itself the
  TPU compiler all-gathers weights (the output projection, o_proj, q_proj slices) at every
  decode step to serve only its own rows (docs/tpu.md, "Decode: the weight side")."""
  # pylint: disable-next=protected-access
  if sharding_rules._ACTIVATIONS.get() is not None or _MESH.get() is None:
    return x
  mesh = _MESH.get()[0]
  axes = [None] * x.ndim
  axes[axis] = logical
  spec = sharding_rules.spec_for(x.shape, tuple(axes), mesh, sharding_rules.SAMPLING_RULES)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _active_mesh():
  # pylint: disable-next=protected-access
  return sharding_rules._ACTIVATIONS.get() or _MESH.get()


def _sharded(fn, q, k, v, q_slot, key_valid, q_seg, k_seg):
  """`fn` (a Pallas path) inside a shard_map over the active mesh's batch and head axes
  (`kernel_mesh` or `activation_sharding`); a plain call outside both. Heads stay whole when
  query and key heads would not be split alike (GQA groups must stay on one shard)."""
  active = _active_mesh()
  if active is None:
    return fn(q, k, v, q_slot, key_valid, q_seg, k_seg)
  mesh, rules = active
  q_spec = tuple(sharding_rules.spec_for(q.shape, ("batch", "length", "heads", "head_dim"),
                                         mesh, rules))
  kv_spec = tuple(sharding_rules.spec_for(k.shape, ("batch", "length", "kv_heads", "head_dim"),
                                          mesh, rules))
  q_spec += (None,) * (4 - len(q_spec))
  kv_spec += (None,) * (4 - len(kv_spec))
  heads = q_spec[2] if q_spec[2] == kv_spec[2] else None
  q_spec = P(q_spec[0], None, heads, None)
  kv_spec = P(kv_spec[0], None, heads, None)
  row = P(q_spec[0], None)
  segs = () if q_seg is None else (q_seg, k_seg)

  def local(q, k, v, q_slot, key_valid, *segs):
    return fn(q, k, v, q_slot, key_valid, *(segs or (None, None)))

  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, row, row)
                       + (row,) * len(segs), out_specs=q_spec, check_vma=False)(
                           q, k, v, q_slot, key_valid, *segs)


def attention(q, k, v, q_slot, key_valid, q_seg=None, k_seg=None, *, kv_block: int = 512,
              q_block: int = 512, impl: str | None = None, chunk_only: bool = False):
  """The masked attention of `dense_attention`, by the path `impl` names (None: the
  `attention_impl` context, "auto" by default; see the module doc). `chunk_only=True` is the
  caller's promise that k/v are the queries' own chunk at slots 0..T-1 (a cache-free forward):
  the Pallas path then compiles no on-device check and no fallback."""
  impl = impl or _IMPL.get()
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  t, s = q.shape[1], k.shape[1]
  args = (q, k, v, q_slot, key_valid, q_seg, k_seg)
  if impl == "dense" or (impl == "auto" and (t < 16 or s <= kv_block)):
    return dense_attention(*args)
  blocked = functools.partial(blocked_attention, q_block=q_block, kv_block=kv_block)
  if impl == "blocked":
    return blocked(*args)

  def pallas(interpret):
    kernel = functools.partial(splash_attention, fallback=blocked, interpret=interpret,
                               chunk_only=chunk_only)
    return lambda *a: _sharded(kernel, *a)

  on_gpu = jax.default_backend() == "gpu"  # cuDNN's call does not even trace without a GPU
  cudnn = functools.partial(cudnn_attention, fallback=blocked,
                            implementation="cudnn" if on_gpu else "xla")
  if impl == "pallas":
    return jax.lax.platform_dependent(*args, tpu=pallas(False), default=pallas(True))
  if impl == "cudnn":
    return cudnn(*args)
  # Without a mesh the Pallas kernel could meet sharded inputs it cannot be partitioned over
  # (a compile error on a multi-chip slice): the blocked path then, on TPU too.
  per_platform = {"tpu": pallas(False) if _active_mesh() is not None else blocked}
  if on_gpu:
    per_platform["cuda"] = cudnn
  return jax.lax.platform_dependent(*args, default=blocked, **per_platform)
