"""aci_jax: AutoCode (EM for autonomous code integration) in JAX."""

from aci_jax.cpu_numerics import prefer_exact_cpu_dots

__version__ = "0.1.0"

# Before any backend starts (XLA reads XLA_FLAGS once): see aci_jax/cpu_numerics.py.
prefer_exact_cpu_dots()
