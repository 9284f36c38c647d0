"""Sharding rules: parameter path -> logical axis names -> mesh axes -> `NamedSharding`.

Two steps, as in MaxText: every parameter dimension gets a *logical* name ("embed", "heads",
"mlp", ...) from the parameter schema (`aci_jax.model.schema`), and a rule table maps logical
names to mesh axes. Changing how a model is parallelised is a different rule table, never an
edit of the model code.

A dimension whose size does not divide by its mesh axes is replicated instead (for example two
kv-heads on a four-way tensor axis); `param_shardings` reports each such fallback once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Mapping[str, "str | tuple[str, ...] | None"]

# The data-parallel mesh axes: rows of every batch (training, sampling, rollouts) are split
# over both, in this order.
ROW_AXES = ("data", "fsdp")

# Training: parameters sharded over fsdp along the model dimension, and over tensor along
# heads/MLP/vocab; batch over (data, fsdp).
TRAINING_RULES: Rules = {
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
}

# Sampling: the model dimension is never split (gathering weights every decode step would
# dominate); heads, MLP columns and vocabulary are split over tensor and then over fsdp, as far
# as they divide. Splitting them over fsdp too keeps a tensor=1 mesh from holding a whole
# replica of the weights per chip (15 GB in bf16 for a 7B model): a decode step then moves
# activations between the fsdp chips ([rows, D] per layer), never weights (the sampler pins
# them so: `aci_jax.model.attention.along_sampling_weights`). "heads" splits the flat
# H * Dh dimension, so a chip may hold part of a head (Qwen2.5-7B, 8 chips: 3.5 heads).
# "fused": the group axis of the sampling copy's fused q/k/v and gate/up kernels
# (`aci_jax.model.fused`), split as their parts are.
SAMPLING_RULES: Rules = {**TRAINING_RULES, "embed": None, "vocab": ("tensor", "fsdp"),
                         "heads": ("tensor", "fsdp"), "kv_heads": ("tensor", "fsdp"),
                         "mlp": ("tensor", "fsdp"), "fused": ("tensor", "fsdp")}

# Activations of the training forward/backward: rows over every data-parallel axis, the model
# dimension whole, heads / MLP columns / vocabulary over tensor. Pinning the model dimension
# unsharded is what makes `fsdp` behave as FSDP: a matmul of [rows, D] activations with a
# [D / fsdp, F / tensor] weight can then only be computed by all-gathering the weight over
# fsdp (its size, once per layer and pass). Left to itself the compiler preferred to gather
# activations over fsdp, contract the sharded D locally and all-reduce partial sums: ~30x the
# inter-chip bytes on Qwen2.5-7B (docs/tpu.md, planner tables).
ACTIVATION_RULES: Rules = {
    "batch": ROW_AXES,
    "length": None,
    "act_embed": None,
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
}

_ACTIVATIONS: contextvars.ContextVar = contextvars.ContextVar("aci_activation_sharding",
                                                              default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules = ACTIVATION_RULES):
  """While tracing inside this context, `constrain` pins activations to `rules` over `mesh`
  (None: no constraints, the compiler propagates freely)."""
  token = _ACTIVATIONS.set(None if mesh is None else (mesh, rules))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """`x` with a sharding constraint from its logical `axes` (one per dimension) under the
  active `activation_sharding`; unchanged outside one. Dimensions that do not divide their
  mesh axes stay replicated (`spec_for`)."""
  active = _ACTIVATIONS.get()
  if active is None:
    return x
  mesh, rules = active
  spec = spec_for(x.shape, axes, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

def _path_names(path) -> tuple[str, ...]:
  return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def logical_axes(params) -> dict:
  """A tree like `params` whose leaves are tuples of logical axis names, one per dimension
  (from the parameter schema, `aci_jax.model.schema`)."""
  # Imported here: the decoder imports this module (for `constrain`), and importing the model
  # package from the top of this module would import the decoder back.
  from aci_jax.model import fused
  from aci_jax.model.schema import BY_PATH

  def leaf_axes(path, leaf):
    names = _path_names(path)
    if names in BY_PATH:
      axes = BY_PATH[names].logical_axes()
    elif (axes := fused.logical_axes(names)) is None:
      raise KeyError(f"no sharding rule for parameter {'/'.join(names)}")
    if len(axes) != len(leaf.shape):
      raise ValueError(f"{'/'.join(names)} has shape {leaf.shape}, rule gives {axes}")
    return axes

  return jax.tree_util.tree_map_with_path(leaf_axes, params)


def spec_for(shape, axes, mesh: Mesh, rules: Rules, *, name: str = "", warn=None) -> P:
  """PartitionSpec for one array: logical names mapped through `rules`, mesh axes that are
  size 1 or do not divide the dimension dropped, and no mesh axis used twice."""
  used: set[str] = set()
  out = []
  for dim, logical in zip(shape, axes):
    mesh_axes = rules.get(logical)
    if mesh_axes is None:
      out.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
    wanted = mesh_axes
    # Several mesh axes: keep the longest leading run whose product divides the dimension.
    while mesh_axes and dim % math.prod(mesh.shape[a] for a in mesh_axes):
      mesh_axes = mesh_axes[:-1]
    if wanted != mesh_axes and warn is not None:
      size = math.prod(mesh.shape[a] for a in wanted)
      warn(f"{name}: dim {dim} ({logical}) not divisible by {wanted}={size}; "
           f"{'split over ' + str(mesh_axes) if mesh_axes else 'replicated'}")
    used.update(mesh_axes)
    out.append(None if not mesh_axes else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
  return P(*out)


def param_shardings(params, mesh: Mesh, rules: Rules = TRAINING_RULES) -> dict:
  """A tree of `NamedSharding` for `params` (arrays or ShapeDtypeStructs)."""
  axes = logical_axes(params)
  warned: set[str] = set()

  def warn(msg):
    if msg not in warned:
      warned.add(msg)
      logging.info("sharding: %s", msg)

  def one(path, leaf, ax):
    spec = spec_for(leaf.shape, ax, mesh, rules, name="/".join(_path_names(path)), warn=warn)
    return NamedSharding(mesh, spec)

  # `params` fixes the tree structure; the tuples of `axes` sit at its leaves and pass whole.
  return jax.tree_util.tree_map_with_path(one, params, axes)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the rows of a batch are split: the product of the ROW_AXES sizes."""
  return math.prod(mesh.shape[a] for a in ROW_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Rows of a [B, ...] batch split over every data-parallel axis (data and fsdp)."""
  return NamedSharding(mesh, P(ROW_AXES, *([None] * (ndim - 1))))
