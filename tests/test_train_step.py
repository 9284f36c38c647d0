"""The sharded train step: chunked log-probs equal the plain ones, 8 devices equal 1, k
accumulated micro-batches equal one batch, bf16 compute with float32 master weights, donation,
and the learning-rate schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.model import Decoder, ModelConfig, init_params
from aci_jax.parallel import MeshConfig, make_mesh
from aci_jax.train import (LossConfig, OptimConfig, StepConfig, init_train_state, make_optimizer,
                           make_train_step, shard_batch, token_logprobs)

CFG = ModelConfig(arch="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)


def rl_batch(seed, b=8, t=12, vocab=64):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  for i in range(0, b, 3):
    valid[i, : i % 4] = False  # some left padding
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
  loss_mask = (np.arange(t)[None] >= 4) & valid & (rng.random((b, t)) < 0.9)
  return dict(tokens=tokens, positions=positions, valid=valid,
              loss_mask=loss_mask.astype(np.float32),
              behaviour_logp=(-math.log(vocab) + rng.normal(0, 0.3, (b, t))).astype(np.float32),
              advantages=rng.normal(0, 1, (b,)).astype(np.float32),
              decision_mask=(rng.random(b) < 0.5).astype(np.float32),
              ref_logp=(-math.log(vocab) + rng.normal(0, 0.3, (b, t))).astype(np.float32))


# Parameters after two AdamW steps at lr 3e-3: Adam divides each gradient by its own running
# magnitude, so float rounding in a near-zero gradient can move that element's update by ~1e-6;
# a real error (a wrong normalisation, a dropped micro-batch) moves many elements by ~lr = 3e-3.
PARAM_ATOL = 1e-5
LOSS = LossConfig(policy="ppo_clip", decision_coef=0.5, kl_coef=0.1)
OPT = OptimConfig(lr=3e-3, warmup_steps=2, decay_steps=10, weight_decay=0.01, clip_norm=1.0)


_RUNS = {}


def cached_run(mesh_cfg: MeshConfig | None, micro=1):
  """run_steps on the default inputs, shared between tests (each compile costs seconds)."""
  key = (mesh_cfg, micro)
  if key not in _RUNS:
    mesh = one_device_mesh() if mesh_cfg is None else make_mesh(mesh_cfg)
    _RUNS[key] = run_steps(mesh, micro=micro)
  return _RUNS[key]


def run_steps(mesh, *, micro=1, cfg=CFG, steps=2, loss=LOSS, batches=None, scan_layers=True):
  params = init_params(cfg, jax.random.key(0))
  tx, sched = make_optimizer(OPT)
  state, sh = init_train_state(params, tx, mesh, seed=0)
  fn = make_train_step(cfg, loss, tx, sched, mesh, sh, StepConfig(
      micro_batches=micro, logprob_chunk=5, scan_layers=scan_layers))
  metrics = []
  for i in range(steps):
    batch = batches[i] if batches else rl_batch(i)
    old_leaf = state.params["embed"]["embedding"]
    state, m = fn(state, shard_batch(batch, mesh))
    metrics.append({k: float(v) for k, v in m.items()})
    metrics[-1]["_donated"] = float(old_leaf.is_deleted())
  return jax.device_get(state.params), metrics, state


def assert_trees_close(a, b, atol, rtol=0.0):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol,
                               rtol=rtol, err_msg=jax.tree_util.keystr(path))


def assert_metrics_close(m1, m2, rtol=1e-5, atol=1e-6):
  for a, b in zip(m1, m2):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# -------------------------------------------------------------------------- log-probs


def test_chunked_logprobs_and_gradient_equal_full_logits():
  chunk = 5  # S = 11: three chunks, the last one padded
  params = init_params(CFG, jax.random.key(1))
  b = rl_batch(0)
  args = (jnp.asarray(b["tokens"]), jnp.asarray(b["positions"]), jnp.asarray(b["valid"]))

  def full(p):
    logits, _ = Decoder(CFG).apply({"params": p}, *args[:2], valid=args[2])
    ls = jax.nn.log_softmax(logits[:, :-1], -1)
    return jnp.take_along_axis(ls, args[0][:, 1:, None], -1)[..., 0]

  def chunked(p):
    return token_logprobs(p, CFG, *args, chunk=chunk)[0]

  np.testing.assert_allclose(chunked(params), full(params), atol=2e-6)
  w = jnp.asarray(np.random.default_rng(0).normal(size=b["tokens"][:, 1:].shape), jnp.float32)
  g1 = jax.grad(lambda p: jnp.sum(w * chunked(p)))(params)
  g2 = jax.grad(lambda p: jnp.sum(w * full(p)))(params)
  assert_trees_close(g1, g2, atol=1e-5, rtol=1e-4)
  # Entropy, against the full softmax.
  logits, _ = Decoder(CFG).apply({"params": params}, *args[:2], valid=args[2])
  p = jax.nn.softmax(logits[:, :-1], -1)
  ent = -(p * jnp.log(p)).sum(-1)
  np.testing.assert_allclose(token_logprobs(params, CFG, *args, chunk=chunk)[1], ent, atol=1e-5)


def _all_avals(jaxpr):
  """Every value computed anywhere in `jaxpr`, including inside scan/remat/pjit bodies."""
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield v.aval
    for p in eqn.params.values():
      for item in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = getattr(item, "jaxpr", item)
        if hasattr(inner, "eqns"):
          yield from _all_avals(inner)


def test_training_graph_never_holds_full_vocab_logits():
  """Trace the gradient of the loss for a 152k vocabulary at T=1024 and check no value in the
  whole program (forward, backward, inside scans and remat) has the shape [B, S, V] or
  [B, T, V]; with chunk 128 the largest logits block is [B, 128, V]."""
  big = CFG.replace(vocab_size=151_936, hidden_size=64, intermediate_size=64, num_layers=1)
  t, b, chunk = 1024, 2, 128
  params = jax.eval_shape(lambda: init_params(big, jax.random.key(0)))
  tok = jax.ShapeDtypeStruct((b, t), jnp.int32)
  val = jax.ShapeDtypeStruct((b, t), jnp.bool_)

  def loss(p, tokens, valid):
    logp, _ = token_logprobs(p, big, tokens, tokens, valid, chunk=chunk)
    return logp.sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss))(params, tok, val).jaxpr
  vocab_shapes = {tuple(a.shape) for a in _all_avals(jaxpr)
                  if hasattr(a, "shape") and big.vocab_size in a.shape}
  assert vocab_shapes, "the check must see the vocab-sized values at all"
  for shape in vocab_shapes:
    elems = math.prod(shape)
    assert elems <= b * chunk * big.vocab_size, shape
  assert (b, chunk, big.vocab_size) in vocab_shapes or (b, chunk, big.vocab_size) in {
      s[-3:] for s in vocab_shapes}


# ------------------------------------------------------------------------- train step


def one_device_mesh():
  return make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(data=2, fsdp=4), MeshConfig(fsdp=2, tensor=4)],
                         ids=["data2-fsdp4", "fsdp2-tensor4"])
def test_eight_device_step_equals_one_device(mesh_cfg):
  assert jax.device_count() == 8
  p1, m1, _ = cached_run(None)
  p8, m8, state = cached_run(mesh_cfg)
  # Sharded parameters really are sharded (not silently replicated).
  emb = state.params["embed"]["embedding"]
  assert len({str(s.index) for s in emb.addressable_shards}) > 1
  assert_trees_close(p8, p1, atol=PARAM_ATOL)
  assert_metrics_close(m8, m1)
  assert m1[0]["loss"] != m1[1]["loss"]


def test_accumulated_micro_batches_equal_one_batch():
  p1, m1, _ = cached_run(MeshConfig(data=2, fsdp=4))
  p4, m4, _ = cached_run(MeshConfig(data=2, fsdp=4), micro=4)
  assert_trees_close(p4, p1, atol=PARAM_ATOL)
  assert_metrics_close(m4, m1)


def test_accumulation_is_not_an_average_of_micro_means():
  """Micro-batches with very different token counts: a mean of per-micro-batch means would
  differ from the large-batch loss; our sum-then-normalise must not."""
  b = rl_batch(5, b=8)
  b["loss_mask"][::2] = 0.0  # micro-batch 0 (rows 0, 2, 4, 6 with k=2) ...
  b["loss_mask"][0, 4:] = 1.0  # ... has far fewer tokens than micro-batch 1
  mesh = one_device_mesh()
  for loss in (LossConfig(policy="grpo", aggregation="seq_mean", decision_coef=0.2),):
    p1, m1, _ = run_steps(mesh, micro=1, batches=[b, b], loss=loss)
    p2, m2, _ = run_steps(mesh, micro=2, batches=[b, b], loss=loss)
    assert_trees_close(p2, p1, atol=PARAM_ATOL)
    assert_metrics_close(m2, m1)


def test_unrolled_layers_train_like_the_scan():
  """train.scan_layers=False (the toy's faster CPU step) runs each layer on its slice of the
  stacked parameters: the same two AdamW steps, the parameters still stacked."""
  p_scan, m_scan, _ = cached_run(None)
  p_loop, m_loop, state = run_steps(one_device_mesh(), scan_layers=False)
  assert "layers" in state.params  # the train state keeps the stacked (checkpoint) form
  assert_trees_close(p_loop, p_scan, atol=PARAM_ATOL)
  assert_metrics_close(m_loop, m_scan)


def test_bf16_compute_with_float32_master_weights():
  cfg = CFG.replace(dtype="bfloat16", param_dtype="float32")
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  b = rl_batch(0)
  b["advantages"][:] = 1.0  # every step should push log-probs of these tokens up
  _, metrics, state = run_steps(mesh, cfg=cfg, steps=4, loss=LossConfig(policy="sft_nll"),
                                batches=[b] * 4)
  leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in leaves)
  losses = [m["loss"] for m in metrics]
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses
  # Compute really is bf16: the first loss differs from the float32 model's (same params, a
  # forward only) by more than float32 rounding, but only slightly.
  p0 = init_params(CFG, jax.random.key(0))
  logp32 = jax.jit(lambda p, t, pos, v: token_logprobs(p, CFG, t, pos, v, chunk=5)[0])(
      p0, b["tokens"], b["positions"], b["valid"])
  m = (b["loss_mask"] * b["valid"])[:, 1:]
  nll32 = float(-(np.asarray(logp32) * m).sum() / m.sum())
  assert 1e-6 < abs(nll32 - losses[0]) < 0.05, (nll32, losses[0])


def test_state_is_donated_and_metrics_are_complete():
  _, metrics, state = cached_run(MeshConfig(data=2, fsdp=4))
  assert int(state.step) == 2
  assert all(m["_donated"] == 1.0 for m in metrics)  # the input state's buffers were reused
  m = metrics[0]
  for key in ("loss", "loss/ppo_clip", "loss/decision_ce", "loss/kl_k3", "ppo_clip/clip_frac",
              "ppo_clip/ratio_min", "ppo_clip/ratio_mean", "ppo_clip/ratio_max", "entropy",
              "adv/mean", "adv/std", "adv/min", "adv/max", "grad_norm", "lr", "tokens"):
    assert key in m and np.isfinite(m[key]), key
  total = m["loss/ppo_clip"] + 0.5 * m["loss/decision_ce"] + 0.1 * m["loss/kl_k3"]
  np.testing.assert_allclose(m["loss"], total, rtol=1e-5)
  assert metrics[0]["lr"] == 0.0 and 0 < metrics[1]["lr"] < OPT.lr  # warm-up from 0
  assert 0.0 < m["ppo_clip/clip_frac"] < 1.0


def test_reference_logprobs_fill_the_batch_layout_and_zero_the_kl():
  """make_logprobs_fn gives token-aligned log-probs; used as ref_logp of the same params, the
  k3 KL term is exactly 0 and its gradient vanishes, as KL(pi || pi) must."""
  from aci_jax.train import make_logprobs_fn
  from aci_jax.train import losses as L
  mesh = make_mesh(MeshConfig(data=8))
  params = init_params(CFG, jax.random.key(2))
  tx, _ = make_optimizer(OPT)
  _, sh = init_train_state(params, tx, mesh, seed=0)
  b = rl_batch(3)
  ref = np.asarray(make_logprobs_fn(CFG, sh.params, chunk=5)(params, shard_batch(b, mesh)))
  want = np.asarray(token_logprobs(params, CFG, b["tokens"], b["positions"], b["valid"])[0])
  assert ref.shape == b["tokens"].shape and np.all(ref[:, 0] == 0)
  np.testing.assert_allclose(ref[:, 1:], want, atol=1e-6)
  b["ref_logp"] = ref
  cfg = L.LossConfig(policy="sft_nll", kl_coef=1.0)
  targets = L.prepare_targets({k: jnp.asarray(v) for k, v in b.items()})
  weights = L.term_weights(targets, cfg)

  def kl(p):
    logp, ent = token_logprobs(p, CFG, b["tokens"], b["positions"], b["valid"], chunk=5)
    return L.objective(L.context(logp, ent, targets), weights, cfg)[1]["loss/kl_k3"][1]

  value, grad = jax.value_and_grad(kl)(params)
  assert abs(float(value)) < 1e-6
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad)) < 1e-5


def test_schedule_warmup_then_cosine():
  from aci_jax.train import make_schedule
  cfg = OptimConfig(lr=1.0, warmup_steps=4, decay_steps=14, end_lr_ratio=0.1)
  s = make_schedule(cfg)
  for step in range(20):
    if step < 4:
      want = step / 4
    else:
      frac = min(step - 4, 10) / 10
      want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    assert abs(float(s(step)) - want) < 1e-6, (step, float(s(step)), want)
  with pytest.raises(ValueError, match="warmup_steps"):
    OptimConfig(warmup_steps=10, decay_steps=5)
