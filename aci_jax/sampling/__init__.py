"""Jitted tool-integrated sampling: extend/prefill, decode loop, on-device stop strings."""

from aci_jax.sampling.sampler import (
    DONE, EMPTY, PAUSED, RUNNING, SamplerState, SamplingParams, Tables, decode, extend,
    reset_rows, row_key, row_keys, sample_tokens, state_shardings)
from aci_jax.sampling.stops import StringMatcher, build_matcher, token_texts

__all__ = [
    "DONE", "EMPTY", "PAUSED", "RUNNING", "SamplerState", "SamplingParams", "StringMatcher",
    "Tables", "build_matcher", "decode", "extend", "reset_rows", "row_key", "row_keys",
    "sample_tokens", "state_shardings", "token_texts",
]
