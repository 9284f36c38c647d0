"""The backend attention kernels (aci_jax/model/kernels/) against a NumPy float64 reference and
the blocked path: Pallas splash attention in Pallas's interpreter (the TPU path), and
jax.nn.dot_product_attention through XLA (the call the GPU path makes with cuDNN). Forward and
backward, with GQA, packing segments, padding holes, extends at per-row cursors; which inputs
each kernel takes and which go to the fallback; the dispatch by platform.

Tolerance: float32 everywhere, atol 1e-5 / rtol 1e-4 against float64 (the blocked path's own
test's bound: summation order over <= 200 keys of O(1) terms moves results by ~1e-6), and 1e-4
between paths (the issue's bound)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from test_attention import _case, _reference

from aci_jax.model import Decoder, ModelConfig, init_params
from aci_jax.model import attention as A
from aci_jax.model.kernels import cudnn as C
from aci_jax.model.kernels import splash as S
from aci_jax.parallel.mesh import AXES


def _jnp(args):
  return tuple(None if x is None else jnp.asarray(x) for x in args)


def _live(args):
  q, k, v, q_slot, key_valid, q_seg, k_seg = _jnp(args)
  return np.asarray(A._mask(q_slot, q_seg, key_valid, k_seg, jnp.arange(k.shape[1])).any(-1))


def _check_against_reference(fn, args, seed, grads=True):
  rng = np.random.default_rng(seed)
  q, k, v, q_slot, key_valid, q_seg, k_seg = args
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  ref_out, ref_grads, live = _reference(*args, d_out)
  d_out = d_out * live[:, :, None, None]  # padding queries' outputs are never read
  rest = _jnp(args[3:])

  @jax.jit
  def run(q, k, v, d_out):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, *rest), q, k, v)
    return out, (vjp(d_out) if grads else None)

  out, got = run(*_jnp((q, k, v, d_out)))
  np.testing.assert_allclose(np.asarray(out)[live], ref_out[live], atol=1e-5, rtol=1e-4)
  if grads:
    for g, want in zip(got, ref_grads):
      np.testing.assert_allclose(np.asarray(g), want, atol=1e-5, rtol=1e-4)
  return np.asarray(out), live


def _splash(*args):
  return S.splash_attention(*args, fallback=A.dense_attention, interpret=True)


# ------------------------------------------------------------------------ splash (TPU path)


@pytest.mark.parametrize("packed,chunk_only", [(False, False), (True, False), (True, True)])
def test_splash_training_chunk_matches_reference(packed, chunk_only):
  """A chunk over itself (S == T, slots 0..T-1): holes, a fully masked padding query,
  packing segments, GQA (4 query heads over 2 key heads), T = 72 padded to 128; checked on
  device, or promised by the caller (`chunk_only`: no check, no fallback)."""
  rng = np.random.default_rng(10 + packed)
  args = _case(rng, t=72, s=72, packed=packed)
  assert int(S.case(jnp.asarray(args[3]), 72)) == 0
  fn = lambda *a: S.splash_attention(*a, fallback=lambda q, *_: q * 0 + 7.0, interpret=True,
                                     chunk_only=chunk_only)
  _check_against_reference(fn, args, seed=1)
  if chunk_only:
    with pytest.raises(ValueError, match="chunk_only"):
      S.splash_attention(*_jnp(_case(rng, t=24, s=40, cache=True)), fallback=None,
                         chunk_only=True)


def test_splash_extend_matches_reference():
  """A chunk at a different cursor in each row over a cache with holes (S = 200)."""
  rng = np.random.default_rng(12)
  args = _case(rng, t=40, s=200, cache=True)
  assert int(S.case(jnp.asarray(args[3]), 200)) == 1
  assert len(set(args[3][:, 0])) == 2  # the rows' cursors differ
  _check_against_reference(_splash, args, seed=2)


def test_splash_extend_with_segments_and_invalid_chunk_slots():
  """Extend where some of the chunk's own slots are holes (left padding in the chunk) and
  queries carry segment ids: the chunk half of the keys takes validity and segments too."""
  rng = np.random.default_rng(13)
  q, k, v, q_slot, key_valid, _, _ = _case(rng, t=24, s=150, cache=True)
  key_valid[1, q_slot[1, :5]] = False  # the first 5 tokens of row 1's chunk are padding
  q_seg = np.zeros((2, 24), np.int32)
  q_seg[:, 12:] = 1
  k_seg = np.ones((2, 150), np.int32)
  for i in range(2):
    k_seg[i, :q_slot[i, 0]] = 0
    k_seg[i, q_slot[i]] = q_seg[i]
  _check_against_reference(_splash, (q, k, v, q_slot, key_valid, q_seg, k_seg), seed=3)


def test_splash_case_sends_the_rest_to_the_fallback():
  """Slots that are not consecutive, or a chunk past the cache end, have no static mask:
  `case` says 2 and the fallback's result comes back."""
  t, s = 16, 64
  base = np.arange(t)[None] + np.array([[0], [30]])
  gap = base.copy()
  gap[0, 8:] += 1  # a row whose slots skip one
  past = base + np.array([[0], [40]])  # row 1 would run to slot 85 >= 64
  assert int(S.case(jnp.asarray(base, jnp.int32), s)) == 1
  assert int(S.case(jnp.asarray(gap, jnp.int32), s)) == 2
  assert int(S.case(jnp.asarray(past, jnp.int32), s)) == 2
  assert int(S.case(jnp.asarray(np.broadcast_to(np.arange(t), (2, t)), jnp.int32), t)) == 0
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.standard_normal(sh).astype(np.float32))
             for sh in ((2, t, 4, 8), (2, s, 2, 8), (2, s, 2, 8)))
  valid = jnp.ones((2, s), bool)
  marker = lambda q, *_: jnp.full(q.shape, 7.0, q.dtype)
  for slots, want_marker in ((gap, True), (past, True), (base, False)):
    out = S.splash_attention(q, k, v, jnp.asarray(slots, jnp.int32), valid, None, None,
                             fallback=marker, interpret=True)
    assert bool(jnp.all(out == 7.0)) == want_marker


def test_splash_equals_blocked_path():
  """The current (blocked) path and the splash path, values and gradients, at 1e-4."""
  rng = np.random.default_rng(5)
  args = _case(rng, t=64, s=64, packed=True)
  live = _live(args)
  w = jnp.asarray(rng.standard_normal(args[0].shape).astype(np.float32)
                  * live[:, :, None, None])
  rest = _jnp(args[3:])
  blocked = lambda *a: A.blocked_attention(*a, q_block=16, kv_block=32)

  def grads(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, *rest) * w),
                            argnums=(0, 1, 2)))(*_jnp(args[:3]))

  out_b = jax.jit(blocked)(*_jnp(args))
  out_s = jax.jit(_splash)(*_jnp(args))
  np.testing.assert_allclose(np.asarray(out_s)[live], np.asarray(out_b)[live], atol=1e-4)
  for a, b in zip(grads(_splash), grads(blocked)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


# ------------------------------------------------------------------------ cuDNN (GPU path)


def _right_padded(rng, b=2, t=48, h=4, kh=2, dh=8):
  q = rng.standard_normal((b, t, h, dh)).astype(np.float32)
  k = rng.standard_normal((b, t, kh, dh)).astype(np.float32)
  v = rng.standard_normal((b, t, kh, dh)).astype(np.float32)
  lengths = np.array([t, t - 13])
  key_valid = np.arange(t)[None] < lengths[:, None]
  q_slot = np.broadcast_to(np.arange(t), (b, t)).astype(np.int32).copy()
  return q, k, v, q_slot, key_valid, None, None


def test_dot_product_attention_matches_reference():
  """The call the GPU path makes, through XLA: causal + per-row key lengths, GQA; padding
  queries after a row's length see its whole prefix, as our mask says."""
  args = _right_padded(np.random.default_rng(6))
  marker = lambda q, *_: jnp.full(q.shape, 7.0, q.dtype)  # fails the comparison if taken
  fn = lambda *a: C.cudnn_attention(*a, fallback=marker, implementation="xla")
  out, live = _check_against_reference(fn, args, seed=7)
  assert live.all()


def test_cudnn_path_takes_only_what_its_masks_express():
  """Holes, left padding, packing, extends, empty rows and float32-with-cuDNN go to the
  fallback; right-padded chunks over themselves do not."""
  rng = np.random.default_rng(8)
  q, k, v, q_slot, key_valid, _, _ = _jnp(_right_padded(rng))
  marker = lambda q, *_: jnp.full(q.shape, 7.0, q.dtype)

  def took_fallback(*args, implementation="xla"):
    out = C.cudnn_attention(*args, fallback=marker, implementation=implementation)
    return bool(jnp.all(out == 7.0))

  assert not took_fallback(q, k, v, q_slot, key_valid, None, None)
  holes = key_valid.at[0, 5].set(False)
  left = jnp.roll(key_valid, 13, axis=1)
  empty = key_valid.at[1].set(False)
  seg = jnp.zeros(q_slot.shape, jnp.int32)
  for kv in (holes, left, empty):
    assert took_fallback(q, k, v, q_slot, kv, None, None)
  assert took_fallback(q, k, v, q_slot, key_valid, seg, seg)  # packing
  assert took_fallback(q, k, v, q_slot + 3, key_valid, None, None)  # not from slot 0
  cache_k = jnp.concatenate([k, k], axis=1)
  assert took_fallback(q, cache_k, cache_k, q_slot, jnp.concatenate([key_valid] * 2, 1),
                       None, None)  # S != T: an extend
  assert took_fallback(q, k, v, q_slot, key_valid, None, None, implementation="cudnn")  # f32
  assert C.expressible(q.astype(jnp.bfloat16), k, None, "cudnn")


# ------------------------------------------------------------------------ dispatch


def _primitives(fn, *args):
  return str(jax.make_jaxpr(fn)(*args))


def test_dispatch_paths_and_knob():
  rng = np.random.default_rng(9)
  args = _jnp(_case(rng, t=40, s=72, cache=True))
  auto = _primitives(lambda *a: A.attention(*a, kv_block=32, q_block=16), *args)
  # No mesh named: the TPU branch is the blocked path too (a Pallas kernel cannot meet
  # sharded inputs outside a shard_map)...
  assert "platform_index" in auto and "custom_vjp_call" in auto and "pallas_call" not in auto
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), AXES)
  with A.kernel_mesh(mesh):
    named = _primitives(lambda *a: A.attention(*a, kv_block=32, q_block=16), *args)
  assert "pallas_call" in named and "shard_map" in named  # ...with one, the kernel
  dense = _primitives(lambda *a: A.attention(*a, impl="dense"), *args)
  # Dense has no kernel and no fallback; its only platform switch is its CPU layout.
  assert "pallas_call" not in dense and "custom_vjp_call" not in dense
  with A.attention_impl("blocked"):
    blocked = _primitives(lambda *a: A.attention(*a, kv_block=32, q_block=16), *args)
  assert "pallas_call" not in blocked and "custom_vjp_call" in blocked
  with pytest.raises(ValueError, match="impl"):
    A.attention(*args, impl="flash")
  small = _primitives(lambda *a: A.attention(*a), *args)  # S <= kv_block: dense, as before
  assert "pallas_call" not in small and "custom_vjp_call" not in small
  # ...and on this CPU host the default branch (blocked) is what runs: equal to dense.
  live = _live(_case(np.random.default_rng(9), t=40, s=72, cache=True))
  got = jax.jit(lambda *a: A.attention(*a, kv_block=32, q_block=16))(*args)
  forced = jax.jit(lambda *a: A.attention(*a, kv_block=32, q_block=16, impl="pallas"))(*args)
  want = A.dense_attention(*args)
  np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], atol=1e-5)
  np.testing.assert_allclose(np.asarray(forced)[live], np.asarray(want)[live], atol=1e-5)


def test_pallas_in_shard_map_over_a_mesh():
  """Under a mesh (rows over fsdp, heads over tensor) the kernel runs per shard in a
  shard_map and gives the unsharded result; GQA heads (4 over 2) split alike."""
  rng = np.random.default_rng(14)
  args = _case(rng, b=4, t=40, s=200, cache=True)
  live = _live(args)
  mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(1, 2, 2), AXES)
  with A.kernel_mesh(mesh):
    fn = jax.jit(lambda *a: A.attention(*a, kv_block=32, q_block=16, impl="pallas"))
    text = str(jax.make_jaxpr(fn)(*_jnp(args)))
    got = fn(*_jnp(args))
  assert "shard_map" in text
  want = A.dense_attention(*_jnp(args))
  np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], atol=1e-5)


CFG = ModelConfig(arch="qwen2", vocab_size=80, hidden_size=48, intermediate_size=64,
                  num_layers=2, num_heads=6, num_kv_heads=2, head_dim=8, qkv_bias=True)


def test_decoder_with_pallas_path_equals_blocked():
  """The decoder's cache-free call site, unchanged: a packed training forward with padding
  gives the same logits through splash (interpreted) and blocked. (The cache path calls
  `live_attention.cached_attention`, not `attention`.)"""
  params = init_params(CFG, jax.random.key(0))
  model = Decoder(CFG, attn_block=16)
  rng = np.random.default_rng(11)
  b, t = 2, 40
  tokens = jnp.asarray(rng.integers(0, 80, (b, t)), jnp.int32)
  seg = jnp.asarray(np.repeat([[0] * 15 + [1] * 25], b, 0), jnp.int32)
  positions = jnp.where(seg == 0, jnp.arange(t), jnp.arange(t) - 15)
  valid = jnp.asarray(rng.random((b, t)) > 0.2)

  def run(impl, *a, **kw):
    with A.attention_impl(impl):
      return jax.jit(lambda *a: model.apply({"params": params}, *a, **kw))(*a)

  out_b, _ = run("blocked", tokens, positions, None, valid, segment_ids=seg)
  out_p, _ = run("pallas", tokens, positions, None, valid, segment_ids=seg)
  live = np.asarray(valid)  # a padding token attends to nothing: its logits are garbage
  np.testing.assert_allclose(np.asarray(out_p)[live], np.asarray(out_b)[live], atol=1e-4)
