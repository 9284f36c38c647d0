"""The optimizer's moving average of the parameters (`OptimConfig.average_decay`): the trajectory
against a float64 NumPy replica; absent (and the state as before) when off; sharded like the
parameters; bad values refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aci_jax.model import ModelConfig, param_shapes
from aci_jax.parallel import MeshConfig, make_mesh
from aci_jax.train.optim import (AverageState, OptimConfig, make_optimizer, policy_params,
                                 with_param_average)
from aci_jax.train.step import TrainState, state_shardings


def _quadratic_grads(params, target):
  return jax.tree.map(lambda p, t: 2.0 * (p - t), params, target)


def test_average_follows_the_float64_formula():
  rng = np.random.default_rng(0)
  p0 = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
  target = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
  lr, decay, start, steps = 0.1, 0.8, 3, 9
  opt = with_param_average(optax.sgd(lr), decay, start)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p0)
  state = opt.init(params)
  # float64 replica: SGD on (p - t)^2, then the average's rule written out
  ref_p = {k: v.copy() for k, v in p0.items()}
  ref_avg = None
  for n in range(1, steps + 1):
    grads = _quadratic_grads(params, target)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ref_p = {k: ref_p[k] - lr * 2.0 * (ref_p[k] - target[k]) for k in ref_p}
    if n <= start:
      ref_avg = {k: v.copy() for k, v in ref_p.items()}
    else:
      ref_avg = {k: decay * ref_avg[k] + (1 - decay) * ref_p[k] for k in ref_p}
    for k in ref_p:
      # float32 state against float64: a few ulps of values of order 1
      np.testing.assert_allclose(np.asarray(state.average[k]), ref_avg[k], rtol=0, atol=2e-6)
      np.testing.assert_allclose(np.asarray(params[k]), ref_p[k], rtol=0, atol=2e-6)
    assert int(state.count) == n
    if n > start:  # it departs from the parameters after `start`
      assert np.abs(np.asarray(state.average["a"]) - np.asarray(params["a"])).max() > 1e-3


def test_start_zero_averages_from_the_first_update():
  opt = with_param_average(optax.sgd(1.0), 0.5, 0)
  params = {"w": jnp.array([0.0])}
  state = opt.init(params)
  seen = []
  for g in (-1.0, -1.0, -1.0):  # params 1, 2, 3
    updates, state = opt.update({"w": jnp.array([g])}, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(float(state.average["w"][0]))
  assert seen == [1.0, 1.5, 2.25]  # the first update sets it; then 0.5 * avg + 0.5 * params


def test_off_leaves_the_optimizer_state_as_it_was():
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones(2)}
  off, _ = make_optimizer(OptimConfig(lr=1e-3))
  on, _ = make_optimizer(OptimConfig(lr=1e-3, average_decay=0.99, average_start=5))
  s_off, s_on = off.init(params), on.init(params)
  assert not isinstance(s_off, AverageState) and isinstance(s_on, AverageState)
  assert jax.tree.structure(s_on.inner) == jax.tree.structure(s_off)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s_off, rng=None)
  assert policy_params(state) is params
  state = state.replace(opt_state=s_on)
  assert policy_params(state) is s_on.average


def test_the_average_is_sharded_like_the_parameters():
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  params = param_shapes(ModelConfig(arch="llama", vocab_size=256, hidden_size=32,
                                    intermediate_size=64, num_layers=2, num_heads=4,
                                    num_kv_heads=2, head_dim=8))
  opt, _ = make_optimizer(OptimConfig(lr=1e-3, average_decay=0.9))
  abstract = jax.eval_shape(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                 opt_state=opt.init(p), rng=jnp.zeros(2)),
                            params)
  sh = state_shardings(abstract, mesh)
  for p, a in zip(jax.tree.leaves(sh.params), jax.tree.leaves(sh.opt_state.average)):
    assert a == p
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(sh.opt_state.average))


@pytest.mark.parametrize("kw", [dict(average_decay=1.0), dict(average_decay=-0.1),
                                dict(average_start=-1)])
def test_bad_average_settings_are_refused(kw):
  with pytest.raises(ValueError, match="average_decay"):
    OptimConfig(**kw)
