"""Rotary position embeddings (the rotate-half layout used by Qwen2 and Llama checkpoints)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from aci_jax.model.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
  """[Dh/2] float32 inverse frequencies, with linear or Llama-3 scaling applied.

  Computed on the host in float64 and rounded once to float32, so the table is a constant of the
  compiled program and does not depend on the accelerator's transcendental precision.
  """
  dh = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
  rs = cfg.rope_scaling
  if rs is None:
    pass
  elif rs.kind == "linear":
    inv = inv / rs.factor
  elif rs.kind == "llama3":
    # Llama-3.1: keep high frequencies, divide low frequencies by `factor`, and interpolate
    # smoothly in between (wavelengths measured against the original context length).
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = ((rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
              (rs.high_freq_factor - rs.low_freq_factor))
    mid = (1 - smooth) * inv / rs.factor + smooth * inv
    inv = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    is_mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    inv = np.where(is_mid, mid, inv)
  else:  # config.py rejects other kinds; this guards direct construction.
    raise ValueError(f"unknown rope scaling {rs.kind!r}")
  return inv.astype(np.float32)


def rope_tables(cfg: ModelConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(sin, cos), each [B, T, Dh/2] float32, for integer `positions` [B, T]."""
  inv = jnp.asarray(inverse_frequencies(cfg))
  angles = positions.astype(jnp.float32)[..., None] * inv
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jnp.ndarray, sin: jnp.ndarray, cos: jnp.ndarray) -> jnp.ndarray:
  """Rotates x [B, T, N, Dh] by the tables [B, T, Dh/2]; the math is done in float32."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  s, c = sin[:, :, None, :], cos[:, :, None, :]
  out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
  return out.astype(x.dtype)
