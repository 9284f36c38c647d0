"""aci_jax: AutoCode (EM for autonomous code integration) in JAX."""

__version__ = "0.1.0"
