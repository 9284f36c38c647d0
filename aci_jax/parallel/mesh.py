"""The device mesh: axes `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded), `tensor` (heads and MLP columns split across devices)."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; exactly one may be -1, meaning "all remaining devices"."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"{num_devices} devices do not divide into mesh {sizes}")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                       f"{num_devices} are available")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices (of every host) or the given ones.

  `tensor` is the innermost axis so tensor-parallel collectives stay on the fastest links
  (within a host / along a TPU torus dimension); `jax.make_mesh` picks a topology-aware order.
  """
  # Auto axes: the compiler propagates shardings from the ones we place on inputs (GSPMD).
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if devices is None:
    return jax.make_mesh(cfg.resolve(jax.device_count()), AXES, axis_types=auto)
  devices = list(devices)
  shape = cfg.resolve(len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)
