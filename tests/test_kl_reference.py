"""The KL term's reference policy in the production trainer: the run's *starting* parameters,
fed as `ref_logp` to every step, rebuilt identically on resume (loss.kl_coef > 0 used to fail at
the first M-step: nothing supplied `ref_logp`)."""

import os
import runpy

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainer(workdir, kl_coef):
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.runner import Trainer

  c = runpy.run_path(os.path.join(ROOT, "configs", "sft_toy.py"))["get_config"]()
  c.unlock()
  c.train.batch_size = 8
  c.optim.lr, c.optim.warmup_steps = 3e-2, 0  # a large step, so the policy leaves the reference
  c.checkpoint.async_save = False
  tr = Trainer(c, str(workdir), loss_cfg=LossConfig(policy="sft_nll", kl_coef=kl_coef))
  tr.restore_or_init()
  return tr


def _batch(seed, rows=8, length=24, vocab=256):
  rng = np.random.default_rng(seed)
  mask = np.zeros((rows, length), np.float32)
  mask[:, 8:] = 1.0  # a "prompt" of 8 tokens, then the trained response
  return {"tokens": rng.integers(0, vocab, (rows, length)).astype(np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "valid": np.ones((rows, length), np.int32), "loss_mask": mask}


def _k3_by_hand(tr, params, ref_params, batch):
  """token-mean over the loss mask of exp(r) - r - 1, r = log pi_ref - log pi (float64)."""
  from aci_jax.train import make_logprobs_fn

  fn = make_logprobs_fn(tr.model_cfg, tr.shardings.params)
  b = {k: jax.numpy.asarray(v) for k, v in batch.items()}
  r = (np.asarray(fn(ref_params, b), np.float64) - np.asarray(fn(params, b), np.float64))
  m = batch["loss_mask"].astype(bool)
  return float(np.mean(np.exp(r[m]) - r[m] - 1.0))


def test_kl_reference_is_the_starting_policy_and_survives_resume(tmp_path):
  tr = _trainer(tmp_path, kl_coef=0.5)
  start = jax.tree.map(np.asarray, tr.state.params)
  m0 = tr.train_step(_batch(0))
  assert m0["loss/kl_k3"] == pytest.approx(0.0, abs=1e-7)  # the policy is the reference
  for s in range(1, 4):
    before = jax.tree.map(np.array, tr.state.params)
    batch = _batch(s)
    want = _k3_by_hand(tr, before, start, batch)
    got = tr.train_step(batch)["loss/kl_k3"]
    # Both sides are float32 forwards of the same parameters (summed in a different order):
    # 1e-4 relative is ~100x their rounding; the KL itself is >= 1e-3 here.
    assert want > 1e-3 and got == pytest.approx(want, rel=1e-4), (s, got, want)
  tr.save()
  tr.ckpt.wait()
  moved = jax.tree.map(np.asarray, tr.state.params)
  tr.close()
  # A resumed run rebuilds the reference from the start, not from the checkpoint it resumes.
  tr2 = _trainer(tmp_path, kl_coef=0.5)
  for a, b, c in zip(jax.tree.leaves(start), jax.tree.leaves(tr2._ref_params),
                     jax.tree.leaves(moved)):
    np.testing.assert_array_equal(np.asarray(b), a)
  assert any(not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(start),
                                                      jax.tree.leaves(moved)))
  batch = _batch(9)
  want = _k3_by_hand(tr2, jax.tree.map(np.array, tr2.state.params), start, batch)
  assert tr2.train_step(batch)["loss/kl_k3"] == pytest.approx(want, rel=1e-4)
  tr2.close()


def test_no_reference_copy_without_a_kl_term(tmp_path):
  tr = _trainer(tmp_path, kl_coef=0.0)
  assert tr._ref_params is None
  assert "loss/kl_k3" not in tr.train_step(_batch(0))
  tr.close()
