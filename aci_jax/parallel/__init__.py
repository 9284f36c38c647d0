"""Device meshes and sharding rules, kept apart from the model code."""

from aci_jax.parallel.mesh import MeshConfig, make_mesh
from aci_jax.parallel.rules import (
    ACTIVATION_RULES, SAMPLING_RULES, TRAINING_RULES, activation_sharding, batch_sharding,
    constrain, logical_axes, param_shardings, spec_for)

__all__ = [
    "MeshConfig", "make_mesh", "ACTIVATION_RULES", "SAMPLING_RULES", "TRAINING_RULES",
    "activation_sharding", "batch_sharding", "constrain", "logical_axes", "param_shardings",
    "spec_for",
]
