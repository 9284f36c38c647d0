"""Device meshes and sharding rules, kept apart from the model code."""

from aci_jax.parallel.mesh import MeshConfig, make_mesh
from aci_jax.parallel.rules import (
    SAMPLING_RULES, TRAINING_RULES, batch_sharding, logical_axes, param_shardings, spec_for)

__all__ = [
    "MeshConfig", "make_mesh", "SAMPLING_RULES", "TRAINING_RULES", "batch_sharding",
    "logical_axes", "param_shardings", "spec_for",
]
