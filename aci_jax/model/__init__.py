"""The policy model: config, parameter schema, Flax decoder, KV cache, checkpoint I/O."""

from aci_jax.model.cache import KVCache, PagedKVCache
from aci_jax.model.config import ModelConfig, RopeScaling, UnsupportedConfigError
from aci_jax.model.decoder import Decoder, init_params, param_shapes, positions_from_valid

__all__ = [
    "Decoder", "KVCache", "ModelConfig", "PagedKVCache", "RopeScaling", "UnsupportedConfigError",
    "init_params", "param_shapes", "positions_from_valid",
]
