"""The project's real programs built for a topology's abstract devices, sharded as a run shards
them: the M-step train step, a prompt chunk extended into every rollout row, and a decode loop
(the train state resident beside the sampling programs, as in a run)."""

from __future__ import annotations

import dataclasses

from aci_jax.plan.setup import Setup


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def train_program(s: Setup, *, micro_batches: int | None = None):
  """(jitted train step, abstract (state, batch)) as the M-step runs it."""
  import jax
  import jax.numpy as jnp
  from aci_jax.train.step import abstract_train_state, batch_sharding, make_train_step

  state, shardings = abstract_train_state(s.model, s.optimizer, s.mesh)
  step_cfg = s.step if micro_batches is None else dataclasses.replace(
      s.step, micro_batches=micro_batches)
  fn = make_train_step(s.model, s.loss, s.optimizer, s.schedule, s.mesh, shardings, step_cfg)
  b, t = s.train_rows, s.train_len
  spec = {"tokens": ((b, t), jnp.int32), "positions": ((b, t), jnp.int32),
          "valid": ((b, t), jnp.bool_), "loss_mask": ((b, t), jnp.float32),
          "behaviour_logp": ((b, t), jnp.float32), "advantages": ((b,), jnp.float32),
          "decision_mask": ((b,), jnp.float32)}
  for k in sorted(s.loss.required_keys() - set(spec)):
    spec[k] = ((b, t), jnp.float32)
  batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(s.mesh, len(shape)))
           for k, (shape, dt) in spec.items()}
  return fn.jitted, (state, batch)


def _sampling_inputs(s: Setup, rows: int):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from aci_jax.model import fused, param_shapes
  from aci_jax.parallel import SAMPLING_RULES, param_shardings
  from aci_jax.sampling import sampler as S
  from aci_jax.train.step import abstract_train_state

  train_state, _ = abstract_train_state(s.model, s.optimizer, s.mesh)
  # The engine's sampling copy: fused q/k/v and gate/up (`RolloutEngine.place_params`).
  groups = fused.sampling_groups(s.model, s.mesh)
  pshapes = param_shapes(s.model)
  if groups:
    pshapes = jax.eval_shape(lambda p: fused.fuse(p, groups), pshapes)
  psh = param_shardings(pshapes, s.mesh, SAMPLING_RULES)
  params = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(
          a.shape, s.model.compute_dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype,
          sharding=sh), pshapes, psh)
  groups = S.page_groups(s.mesh)
  rc = s.rollout_config(rows)
  state = jax.eval_shape(lambda: S.SamplerState.init(
      s.model, rows, s.capacity, s.max_new, page_size=rc.kv_page_size,
      pages_per_group=rc.pool_pages(groups), groups=groups))
  state = _abstract(state, S.state_shardings(state, s.mesh))
  rep = NamedSharding(s.mesh, P())
  v = s.model.vocab_size
  # String automata: a few dozen states each (the fence and the ban strings).
  tables = S.Tables(
      stop_next=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      stop_hit=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      stop_is_tool=jax.ShapeDtypeStruct((2,), jnp.bool_, sharding=rep),
      ban_next=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      ban_hit=jax.ShapeDtypeStruct((32, v), jnp.bool_, sharding=rep),
      eos_ids=jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep))
  return train_state, params, state, tables


def extend_program(s: Setup, *, rows: int | None = None, chunk: int | None = None):
  """(jitted extend with the train state resident, abstract args): a prompt chunk into every
  row, as the engine fills new rows."""
  import jax
  import jax.numpy as jnp
  from aci_jax.sampling import sampler as S
  from aci_jax.train.step import batch_sharding

  rows = rows or s.rollout_rows
  chunk = chunk or s.prompt_chunk
  train_state, params, state, tables = _sampling_inputs(s, rows)
  bs2, bs1 = batch_sharding(s.mesh, 2), batch_sharding(s.mesh, 1)
  tokens = jax.ShapeDtypeStruct((rows, chunk), jnp.int32, sharding=bs2)
  valid = jax.ShapeDtypeStruct((rows, chunk), jnp.bool_, sharding=bs2)
  src = jax.ShapeDtypeStruct((rows,), jnp.int8, sharding=bs1)
  resume = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=bs1)
  cfg = s.model

  def fn(train_state, state, params, tables, tokens, valid, src, resume):
    del train_state  # resident only: the compiler's HBM check must count it
    return S.extend.__wrapped__(cfg, state, params, tables, tokens, valid, src, resume,
                                record=False)

  jitted = jax.jit(fn, donate_argnums=(1,), keep_unused=True)
  return jitted, (train_state, state, params, tables, tokens, valid, src, resume)


def decode_program(s: Setup, *, rows: int | None = None):
  """(jitted decode loop of `decode_steps` steps with the train state resident, args)."""
  import jax
  from aci_jax.model.attention import kernel_mesh
  from aci_jax.sampling import sampler as S

  rows = rows or s.rollout_rows
  train_state, params, state, tables = _sampling_inputs(s, rows)
  cfg, sp, steps = s.model, s.sampling, s.decode_steps

  def fn(train_state, state, params, tables):
    del train_state
    # As the engine traces it: Pallas kernels (paged decode attention) in a shard_map over the
    # mesh.
    with kernel_mesh(s.mesh):
      return S.decode.__wrapped__(cfg, sp, state, params, tables, steps, False)

  jitted = jax.jit(fn, donate_argnums=(1,), keep_unused=True)
  return jitted, (train_state, state, params, tables)

