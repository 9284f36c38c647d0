"""Blocked and dense attention (aci_jax.model.attention) against a NumPy float64 reference,
forward and backward, with padding holes, cache-style slots and packing segments; and the
blocked path against the dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import attention as A


def _case(rng, b=2, t=40, s=72, h=4, kh=2, dh=8, cache=False, packed=False):
  q = rng.standard_normal((b, t, h, dh)).astype(np.float32)
  k = rng.standard_normal((b, s, kh, dh)).astype(np.float32)
  v = rng.standard_normal((b, s, kh, dh)).astype(np.float32)
  key_valid = rng.random((b, s)) > 0.25
  if cache:  # a chunk written at each row's cursor, after earlier (holey) slots
    cursor = rng.integers(0, s - t, size=b)
    q_slot = cursor[:, None] + np.arange(t)[None]
  else:
    q_slot = np.broadcast_to(np.arange(t), (b, t)).copy()
    key_valid[:, t:] = False
  for i in range(b):
    key_valid[i, q_slot[i]] = True  # every query sees at least itself...
  key_valid[0, q_slot[0, 3]] = False  # ...except a padding token (a fully masked row) or two
  q_seg = k_seg = None
  if packed:
    bounds = np.sort(rng.choice(np.arange(1, t), size=3, replace=False))
    seg = np.searchsorted(bounds, np.arange(t), side="right")
    q_seg = np.broadcast_to(seg, (b, t)).astype(np.int32).copy()
    k_seg = np.full((b, s), 99, np.int32)
    k_seg[:, :t] = q_seg
  return (q, k, v, q_slot.astype(np.int32), key_valid, q_seg, k_seg)


def _reference(q, k, v, q_slot, key_valid, q_seg, k_seg, d_out):
  """float64 softmax attention and its gradients, one (row, head, query) at a time."""
  b, t, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  q, k, v, d_out = (x.astype(np.float64) for x in (q, k, v, d_out))
  out = np.zeros_like(q)
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  live = np.zeros((b, t), bool)
  scale = dh ** -0.5
  for i in range(b):
    for j in range(t):
      allowed = key_valid[i] & (np.arange(s) <= q_slot[i, j])
      if q_seg is not None:
        allowed &= k_seg[i] == q_seg[i, j]
      if not allowed.any():
        continue
      live[i, j] = True
      idx = np.nonzero(allowed)[0]
      for hh in range(h):
        g = hh // (h // kh)
        sc = k[i, idx, g] @ q[i, j, hh] * scale
        p = np.exp(sc - sc.max())
        p /= p.sum()
        out[i, j, hh] = p @ v[i, idx, g]
        do = d_out[i, j, hh]
        dv[i, idx, g] += np.outer(p, do)
        dp = v[i, idx, g] @ do
        ds = p * (dp - p @ dp) * scale
        dq[i, j, hh] = ds @ k[i, idx, g]
        dk[i, idx, g] += np.outer(ds, q[i, j, hh])
  return out, (dq, dk, dv), live


# The paths that compute attention from whole chunks: blocked, and dense in both of its layouts
# (the CPU program's head-major one, which `dense_attention` runs on this host, and the einsum
# layout the TPU and GPU programs take, called directly here since this host never selects it).
PATHS = {
    "blocked": lambda *a: A.blocked_attention(*a, q_block=16, kv_block=32),
    "dense_cpu": A.dense_attention,
    "dense_other": lambda *a: A._dense(*a, head_major=False),  # pylint: disable=protected-access
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("cache,packed", [(False, False), (True, False), (False, True)])
def test_matches_float64_reference(cache, packed, path):
  rng = np.random.default_rng(int(cache) * 2 + int(packed))
  args = _case(rng, cache=cache, packed=packed)
  q, k, v, q_slot, key_valid, q_seg, k_seg = args
  d_out = rng.standard_normal(q.shape).astype(np.float32)
  ref_out, ref_grads, live = _reference(*args, d_out)
  d_out = d_out * live[:, :, None, None]  # padding queries' outputs are never read

  def f(q, k, v):
    return PATHS[path](q, k, v, jnp.asarray(q_slot), jnp.asarray(key_valid),
                       None if q_seg is None else jnp.asarray(q_seg),
                       None if k_seg is None else jnp.asarray(k_seg))

  @jax.jit
  def run(q, k, v, d_out):
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(d_out)

  out, grads = run(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(d_out))
  np.testing.assert_allclose(np.asarray(out)[live], ref_out[live], atol=1e-5, rtol=1e-4)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-4)


def test_blocked_equals_dense_path():
  """The path the decoder used before (dense scores) and the blocked one, values and grads."""
  rng = np.random.default_rng(7)
  q, k, v, q_slot, key_valid, q_seg, k_seg = _case(rng, t=64, s=96, packed=True)
  live = np.asarray(A._mask(jnp.asarray(q_slot), jnp.asarray(q_seg), jnp.asarray(key_valid),
                            jnp.asarray(k_seg), jnp.arange(96)).any(-1))
  w = jnp.asarray(rng.standard_normal(q.shape).astype(np.float32) * live[:, :, None, None])
  ints = tuple(jnp.asarray(x) for x in (q_slot, key_valid, q_seg, k_seg))

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, *ints) * w)

  blocked = lambda *a: A.blocked_attention(*a, q_block=16, kv_block=32)
  xs = tuple(jnp.asarray(x) for x in (q, k, v))
  out_d = jax.jit(A.dense_attention)(*xs, *ints)
  out_b = jax.jit(blocked)(*xs, *ints)
  np.testing.assert_allclose(np.asarray(out_b)[live], np.asarray(out_d)[live], atol=1e-4)
  gd = jax.jit(jax.grad(loss(A.dense_attention), argnums=(0, 1, 2)))(*xs)
  gb = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(*xs)
  for a, b in zip(gb, gd):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_blocked_has_no_full_score_tensor():
  """The compiled forward + backward holds no [T, S]-sized float32 buffer."""
  b, t, s, h, dh = 1, 1024, 1024, 2, 16
  q = jnp.zeros((b, t, h, dh))
  k = v = jnp.zeros((b, s, h, dh))
  slot = jnp.broadcast_to(jnp.arange(t), (b, t))
  valid = jnp.ones((b, s), bool)

  def loss(q, k, v):
    return jnp.sum(A.blocked_attention(q, k, v, slot, valid, q_block=128, kv_block=128))

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
  assert "f32[1,2,1,1024,1024]" not in text and "[1,2,1,1024,1024]" not in text
  dense = jax.jit(jax.grad(lambda q, k, v: jnp.sum(A.dense_attention(q, k, v, slot, valid)),
                           argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
  assert "[1,2,1,1024,1024]" in dense  # the check can fail: the dense path has one
