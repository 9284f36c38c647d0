"""Train state and the sharded, jitted train step with gradient accumulation.

    state, metrics = step_fn(state, batch)

`state` is a `TrainState` pytree (params, optimizer state, step, RNG key data) placed with
`NamedSharding`s over the mesh: parameters and Adam moments by the `TRAINING_RULES` table (FSDP
over the model dimension, tensor parallel over heads/MLP/vocab), scalars replicated. The batch is
a dict of [B, T] arrays (plus [B] advantages / decision_mask) with rows split over the (data,
fsdp) axes; an optional `segment_ids` [B, T] marks rows that pack several sequences
(`aci_jax.data.sft.SFTData` with `pack_len`). The state argument is donated, so XLA updates
parameters and moments in place.

Gradient accumulation: the batch is cut into `micro_batches` interleaved slices (row j goes to
micro-batch j mod k, so every slice stays spread over all devices) and a `lax.scan` sums their
gradients. Each loss term is a weighted *sum* whose weights were normalised over the whole batch
first (`losses.term_weights`: divide by the total token count, or by tokens-per-row and row
count), so the accumulated gradient *is* the large-batch gradient, not an average of averages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aci_jax.model import ModelConfig
from aci_jax.parallel import TRAINING_RULES, activation_sharding, batch_sharding, param_shardings
from aci_jax.parallel.rules import ROW_AXES
from aci_jax.train import losses as L
from aci_jax.train.logprobs import token_logprobs

MODEL_KEYS = ("tokens", "positions", "valid")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data [2] (raw, so it checkpoints as a plain array)


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules=TRAINING_RULES) -> TrainState:
  """Shardings for every leaf of the state: params by `rules`; each optimizer-state leaf whose
  path ends with a parameter's path and has its shape (Adam mu/nu, ...) like that parameter;
  everything else (counts, scalars, the RNG) replicated."""
  p_sh = param_shardings(abstract_state.params, mesh, rules)
  by_path = {_names(path): (leaf.shape, sh) for (path, leaf), sh in zip(
      jax.tree_util.tree_leaves_with_path(abstract_state.params), jax.tree.leaves(p_sh))}
  replicated = NamedSharding(mesh, P())

  def opt_leaf(path, leaf):
    names = _names(path)
    for i in range(len(names)):
      hit = by_path.get(names[i:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  opt_sh = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state)
  return TrainState(step=replicated, params=p_sh, opt_state=opt_sh, rng=replicated)


def init_train_state(params, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int,
                     rules=TRAINING_RULES) -> tuple[TrainState, TrainState]:
  """(state, state shardings): the optimizer state is created directly in its sharded layout."""

  def build(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p),
                      rng=jax.random.key_data(jax.random.key(seed)))

  abstract = jax.eval_shape(build, params)
  shardings = state_shardings(abstract, mesh, rules)
  state = jax.jit(build, out_shardings=shardings)(params)
  return state, shardings


def abstract_train_state(model_cfg: ModelConfig, optimizer, mesh: Mesh, rules=TRAINING_RULES):
  """ShapeDtypeStructs with shardings, for restoring a checkpoint without allocating twice."""
  from aci_jax.model import param_shapes

  def build(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p),
                      rng=jax.random.key_data(jax.random.key(0)))

  abstract = jax.eval_shape(build, param_shapes(model_cfg))
  shardings = state_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings


# ------------------------------------------------------------------------------ batches


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, *, global_rows: int | None = None
                ) -> dict:
  """Host arrays -> global arrays sharded over (data, fsdp).

  Single process: `batch` is the whole batch. Several processes: each passes its own rows
  (process i holds rows [i * B/n, (i+1) * B/n) of the global batch, as `jax.process_index`
  orders the mesh), and the global array is assembled without any host seeing all rows.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    sharding = batch_sharding(mesh, v.ndim)
    if jax.process_count() == 1:
      out[k] = jax.device_put(v, sharding)
    else:
      shape = None if global_rows is None else (global_rows,) + v.shape[1:]
      out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
  return out


# ---------------------------------------------------------------------------- train step


@dataclasses.dataclass(frozen=True)
class StepConfig:
  micro_batches: int = 1  # gradient-accumulation steps per optimizer step
  logprob_chunk: int = 512  # sequence positions per logits chunk
  logprob_remat: bool = True  # recompute logits chunks in the backward (see logprobs.py)
  # False: the layers run as a Python loop over per-layer slices of the stacked parameters
  # instead of a scan. Compile time then grows with depth, so it is for small models: a
  # scan's backward keeps every layer's residuals in zero-initialised [L, ...] buffers, and
  # on the toy's 4 layers that filling and copying was ~15% of a CPU warm-up step
  # (benchmarks/bench_sft_packing.py).
  scan_layers: bool = True


def _reduce(red: str, a, b):
  return {"sum": jnp.add, "min": jnp.minimum, "max": jnp.maximum}[red](a, b)


def _neutral(red: str):
  return {"sum": 0.0, "min": np.inf, "max": -np.inf}[red]


def make_train_step(model_cfg: ModelConfig, loss_cfg: L.LossConfig,
                    optimizer: optax.GradientTransformation, schedule: Callable,
                    mesh: Mesh, shardings: TrainState, step_cfg: StepConfig = StepConfig(),
                    *, donate: bool = True):
  """Returns `step_fn(state, batch) -> (state, metrics)`, jitted over `mesh`.

  The batch size must divide by `step_cfg.micro_batches`, and each micro-batch by the number of
  data-parallel devices (data x fsdp) for an even split (uneven splits still run, padded by
  XLA). Metrics are float32 scalars (device arrays; fetch them when logging).
  """
  k = step_cfg.micro_batches
  if k < 1:
    raise ValueError(f"micro_batches must be >= 1, got {k}")
  reductions: dict[str, str] = {}

  def micro_loss(params, inputs, targets, weights):
    # Activations pinned to ACTIVATION_RULES so fsdp gathers weights, not activations.
    with activation_sharding(mesh):
      logp, ent = token_logprobs(params, model_cfg, inputs["tokens"], inputs["positions"],
                                 inputs["valid"].astype(jnp.bool_),
                                 chunk=step_cfg.logprob_chunk, remat=step_cfg.logprob_remat,
                                 scan_layers=step_cfg.scan_layers,
                                 segment_ids=inputs.get("segment_ids"))
    total, metrics = L.objective(L.context(logp, ent, targets), weights, loss_cfg)
    reductions.update({name: red for name, (red, _) in metrics.items()})  # trace-time record
    return total, {name: v for name, (_, v) in metrics.items()}

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def split(x):
    """[B, ...] -> [k, B/k, ...], row j in micro-batch j % k."""
    b = x.shape[0]
    if b % k:
      raise ValueError(f"batch size {b} does not divide into {k} micro-batches")
    y = x.reshape((b // k, k) + x.shape[1:]).swapaxes(0, 1)
    spec = P(None, ROW_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))

  def step(state: TrainState, batch):
    targets = L.prepare_targets(batch)
    weights = L.term_weights(targets, loss_cfg)
    inputs = {key: batch[key] for key in MODEL_KEYS + ("segment_ids",) if key in batch}
    xs = jax.tree.map(split, (inputs, targets, weights))
    if k == 1:  # no accumulation: skip the scan and the zero-initialised gradient buffer
      (_, metrics), grads = grad_fn(state.params, *jax.tree.map(lambda a: a[0], xs))
    else:
      # Structure (and reductions) of the metrics, from an abstract trace of one micro-batch.
      first = jax.tree.map(lambda a: a[0], xs)
      _, aux_shape = jax.eval_shape(lambda p, x: micro_loss(p, *x), state.params, first)
      zero_grads = jax.tree.map(jnp.zeros_like, state.params)
      zero_grads = jax.lax.with_sharding_constraint(zero_grads, shardings.params)
      init_metrics = {name: jnp.full(s.shape, _neutral(reductions[name]), jnp.float32)
                      for name, s in aux_shape.items()}

      def body(carry, x):
        grads, metrics = carry
        (_, aux), g = grad_fn(state.params, *x)
        grads = jax.tree.map(jnp.add, grads, g)
        grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        metrics = {n: _reduce(reductions[n], metrics[n], aux[n]) for n in metrics}
        return (grads, metrics), None

      (grads, metrics), _ = jax.lax.scan(body, (zero_grads, init_metrics), xs)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics.update(L.advantage_stats(targets))
    metrics["grad_norm"] = grad_norm
    metrics["update_norm"] = optax.tree.norm(updates)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    metrics["tokens"] = targets["loss_mask"].sum()
    metrics = {n: jnp.where(jnp.abs(v) >= 1e38, jnp.nan, v).astype(jnp.float32)
               for n, v in metrics.items()}  # empty min/max -> NaN rather than +-3e38
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  jitted = jax.jit(step, donate_argnums=(0,) if donate else (),
                   out_shardings=(shardings, NamedSharding(mesh, P())))

  def step_fn(state: TrainState, batch):
    L.check_batch(batch, loss_cfg)
    return jitted(state, batch)

  step_fn.jitted = jitted
  return step_fn


def make_logprobs_fn(model_cfg: ModelConfig, param_shardings_tree, chunk: int = 512):
  """A jitted `(params, batch) -> logp [B, T]` in the batch's token-aligned layout (index t is
  log p(tokens[t] | tokens[:t]); 0 at t = 0), ready to be stored as `batch["ref_logp"]` (a
  reference policy for the KL term) or `batch["behaviour_logp"]` (the trainer's own log-probs
  at the start of a multi-epoch update)."""

  def fn(params, batch):
    logp, _ = token_logprobs(params, model_cfg, batch["tokens"], batch["positions"],
                             batch["valid"].astype(jnp.bool_), chunk=chunk, remat=False)
    return jnp.pad(logp, ((0, 0), (1, 0)))

  return jax.jit(fn, in_shardings=(param_shardings_tree, None))
