"""Optimizer: AdamW with linear warm-up, an optional hold at the peak, then cosine decay; and
global-norm gradient clipping. Optionally, an exponential moving average of the parameters
kept in the optimizer state (`average_decay`), for the warm-up's low-lr tail.

Weight decay applies to matrices only (kernels and the embedding), never to norm scales or
biases, as is standard for transformer LMs. Moments are kept in the parameter dtype: with
float32 master weights (`model.param_dtype = "float32"`, `model.dtype = "bfloat16"`) the
optimizer state is float32 while the forward/backward matmuls run in bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """lr: peak learning rate; warmup_steps of linear warm-up from 0; hold_steps at lr (a
  warmup-stable-decay schedule; 0: none); then cosine decay to lr * end_lr_ratio at decay_steps
  (total steps including warm-up and hold); clip_norm <= 0 disables clipping."""

  lr: float = 1e-6
  warmup_steps: int = 0
  decay_steps: int = 1000
  hold_steps: int = 0
  end_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  # An exponential moving average of the parameters after each update, with this decay
  # (0: none); it equals the parameters up to step `average_start` and departs from them after.
  # In the optimizer state, so it is sharded like the parameters, checkpointed and resumed.
  average_decay: float = 0.0
  average_start: int = 0

  def __post_init__(self):
    if self.lr < 0 or self.warmup_steps < 0 or self.decay_steps <= 0 or self.hold_steps < 0:
      raise ValueError(f"need lr >= 0, warmup_steps >= 0, hold_steps >= 0, decay_steps > 0; "
                       f"got {self}")
    if self.warmup_steps + self.hold_steps > self.decay_steps:
      raise ValueError(f"warmup_steps + hold_steps ({self.warmup_steps} + {self.hold_steps}) > "
                       f"decay_steps ({self.decay_steps})")
    if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
      raise ValueError(f"Adam betas must lie in [0, 1), got {self.b1}, {self.b2}")
    if not 0.0 <= self.average_decay < 1.0 or self.average_start < 0:
      raise ValueError(f"average_decay must lie in [0, 1) and average_start be >= 0, got "
                       f"{self.average_decay}, {self.average_start}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  flat = cfg.warmup_steps + cfg.hold_steps
  if cfg.decay_steps == flat:  # nothing left to decay: warm up, then hold
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1)),
         optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
  if not cfg.hold_steps:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.decay_steps, end_value=cfg.lr * cfg.end_lr_ratio)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1)),
       optax.constant_schedule(cfg.lr),
       optax.cosine_decay_schedule(cfg.lr, cfg.decay_steps - flat, alpha=cfg.end_lr_ratio)],
      [cfg.warmup_steps, flat])


def _decay_mask(params):
  def leaf(path, _):
    name = getattr(path[-1], "key", str(path[-1]))
    return name in ("kernel", "embedding")
  return jax.tree_util.tree_map_with_path(leaf, params)


class AverageState(NamedTuple):
  inner: Any     # the wrapped optimizer's state
  average: Any   # the moving average, a tree like the parameters
  count: jax.Array  # updates applied so far


def with_param_average(inner: optax.GradientTransformation, decay: float,
                       start: int) -> optax.GradientTransformation:
  """`inner`, plus an exponential moving average of the parameters each update produces:
  after update n, average = params_n for n <= start, else decay * average + (1 - decay) *
  params_n. Why: in the warm-up's tail at lr/10 the probes of a skill swing by 0.1-0.2 from one
  check to the next (docs/em_log.md, "Weight averaging"), and the average of that tail scores above
  every point in it; training itself still follows the parameters."""

  def init(params):
    # zeros, not the parameters: a jitted init may return an input it passes through as the
    # same buffer, and the train step donates the parameters' buffers. The first update sets
    # the average to the parameters whatever `start` is (see update).
    return AverageState(inner.init(params), jax.tree.map(jnp.zeros_like, params),
                        jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_param_average needs the parameters in update()")
    updates, inner_state = inner.update(updates, state.inner, params)
    count = state.count + 1
    new = optax.apply_updates(params, updates)
    # weight of the old average: 0 (restart at the parameters) up to `start` and on the first
    # update whatever `start` is
    w = jnp.where((count > start) & (state.count > 0), decay, 0.0)
    average = jax.tree.map(lambda a, p: (w * a + (1 - w) * p).astype(a.dtype),
                           state.average, new)
    return updates, AverageState(inner_state, average, count)

  return optax.GradientTransformation(init, update)


def policy_params(state) -> Any:
  """The parameters a train state hands on (export, the warm-up gate's probes): the optimizer's
  moving average when it keeps one (average_decay > 0), else the parameters."""
  opt = state.opt_state
  return opt.average if isinstance(opt, AverageState) else state.params


def make_optimizer(cfg: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(cfg)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  optimizer = optax.chain(*parts)
  if cfg.average_decay > 0:
    optimizer = with_param_average(optimizer, cfg.average_decay, cfg.average_start)
  return optimizer, schedule
