"""Fused projections for the sampling copy of the weights: q/k/v as one matmul, gate/up as one.

A decode step is bound by HBM bytes. In the sampler's layout (`SAMPLING_RULES`: heads and MLP
columns split over every chip, all rows on each chip) every projection reads the layer's whole
[rows, D] input from HBM, so separate q, k, v, gate and up projections read it five times
(Qwen2.5-7B on v5p-16, 256 rows: 0.05 GB per read per step, docs/tpu.md). One q/k/v matmul and
one gate/up matmul read it twice.

Concatenating the kernels along their outputs would put q, k and v in different chips'
slices; the fused kernel is therefore grouped: [D, G, n] where G is the number of chips the
sampling rules split each output over and group g holds chip g's slice of q, then of k, then of
v (gate then up for the MLP). The product [rows, G, n] is split over G like the kernel, and
cutting each group into its q / k / v parts and flattening back gives q, k and v split exactly
as the unfused projections' outputs are: no data moves between chips. G is in the kernel's
shape, so a parameter tree says which layout it has (`groups_of`).

Only the sampler uses this form (`RolloutEngine.place_params` builds it once per weight
update); training, checkpoints and exports keep the schema's separate projections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# (block, fused name, parts in order). Each part's kernel is [D, N_part], its bias [N_part].
FUSIONS = (("attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
           ("mlp", "gate_up_proj", ("gate_proj", "up_proj")))


def part_sizes(cfg, fused: str) -> tuple[int, ...]:
  """Output widths of a fusion's parts (q, k, v or gate, up) for model config `cfg`."""
  if fused == "qkv_proj":
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return (q, kv, kv)
  if fused == "gate_up_proj":
    return (cfg.intermediate_size, cfg.intermediate_size)
  raise KeyError(fused)


def _layer_dicts(params: dict):
  """The per-layer (or stacked) subtrees of a parameter tree: `layers` or `layers_{i}`."""
  return [k for k in params if k == "layers" or k.startswith("layers_")]


def groups_of(params: dict) -> int:
  """G of a fused tree (the group axis of its `qkv_proj` kernel); 0 for an unfused tree."""
  keys = _layer_dicts(params)
  if not keys or "qkv_proj" not in params[keys[0]].get("attn", {}):
    return 0
  return int(params[keys[0]]["attn"]["qkv_proj"]["kernel"].shape[-2])


def fuse(params: dict, groups: int) -> dict:
  """The same parameters with each fusion's parts replaced by one grouped kernel (and bias).
  Works on arrays and on `jax.ShapeDtypeStruct`s (through `jax.eval_shape`); stacked [L, ...]
  and per-layer trees alike. Every part's width must divide by `groups`."""
  if groups < 1:
    raise ValueError(f"fused groups must be >= 1, got {groups}")
  out = dict(params)
  for key in _layer_dicts(params):
    layer = dict(params[key])
    for block, name, parts in FUSIONS:
      sub = dict(layer[block])
      for kind in ("kernel", "bias"):
        if kind not in sub[parts[0]]:
          continue
        pieces = []
        for p in parts:
          w = sub[p][kind]
          n = w.shape[-1]
          if n % groups:
            raise ValueError(f"{block}/{p} has {n} outputs, not divisible by {groups} groups")
          pieces.append(w.reshape(*w.shape[:-1], groups, n // groups))
        fused_w = jnp.concatenate(pieces, axis=-1)
        sub.setdefault(name, {})[kind] = fused_w
      for p in parts:
        del sub[p]
      layer[block] = sub
    out[key] = layer
  return out


def split(y: jax.Array, sizes: tuple[int, ...], groups: int) -> list[jax.Array]:
  """[..., G, n] output of a fused projection -> each part [..., N_part], flattened in the
  layout the part's own projection would have produced."""
  outs, start = [], 0
  for size in sizes:
    width = size // groups
    part = y[..., start:start + width]
    outs.append(part.reshape(*y.shape[:-2], size))
    start += width
  return outs


def sampling_groups(cfg, mesh) -> int:
  """G for the sampling copy on `mesh`: the number of shards `SAMPLING_RULES` gives q, k, v,
  gate and up along their outputs when it is the same for all five (then each chip's slices
  sit in one group); 0 (do not fuse) when they differ, since the parts would then have to
  move between chips. Without a mesh, 1."""
  if mesh is None:
    return 1
  from aci_jax.parallel.rules import SAMPLING_RULES, spec_for
  shards = set()
  for logical, size in (("heads", cfg.num_heads * cfg.head_dim),
                        ("kv_heads", cfg.num_kv_heads * cfg.head_dim),
                        ("mlp", cfg.intermediate_size)):
    spec = spec_for((size,), (logical,), mesh, SAMPLING_RULES)
    axes = spec[0] if len(spec) else None
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    n = 1
    for a in axes:
      n *= mesh.shape[a]
    shards.add((axes, n))
  if len(shards) != 1:
    return 0
  return shards.pop()[1]


# The fused leaves' logical axes (without the layer axis), for the sharding rules: the group
# axis is split like the parts' outputs ("fused" in SAMPLING_RULES), the rest stays whole.
AXES = {"kernel": ("embed", "fused", None), "bias": ("fused", None)}


def logical_axes(names: tuple[str, ...]) -> tuple[str, ...] | None:
  """Logical axes of a fused leaf at path `names` (stacked: leading "layers"); None if the
  path is not a fused leaf."""
  if len(names) != 4 or names[0] != "layers" or names[3] not in AXES:
    return None
  if (names[1], names[2]) not in {(b, n) for b, n, _ in FUSIONS}:
    return None
  return ("layers",) + AXES[names[3]]

