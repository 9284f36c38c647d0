"""The policy's native code rate, read exactly from its probabilities instead of sampled.

A sampled code rate over k rollouts has a standard error of sqrt(p(1 - p) / k): telling a 1%
native rate from 3% needs hundreds of samples per query. When a code response begins with the
tool format's code prefix (the toy's demonstrations do; so do forced code rollouts), the
probability that a native rollout *opens* with a cell is the teacher-forced probability of that
prefix right after the prompt, at the sampling temperature:

    P(code first | x) = prod_i softmax(logits_i / T)[prefix_i]

one forward pass per query. It is a lower bound on the native code rate when a policy may write
prose before its first cell, and the exact rate for a policy whose code responses start with the
prefix (the rare-code regime of docs/em.md checks that on samples too). Nucleus/top-k truncation
is not applied: at T = 1 without truncation, the E-step's setting, the figure is exact.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import Decoder, ModelConfig


def prefix_logprob(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]],
                   prefix: Sequence[int], *, temperature: float = 1.0,
                   batch: int = 64) -> np.ndarray:
  """log P(response starts with `prefix` | prompt) per prompt, at `temperature`: [N] float64."""
  if not prefix:
    raise ValueError("prefix must hold at least one token")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 (greedy has no probability), got {temperature}")
  prefix = [int(t) for t in prefix]
  longest = max(len(p) for p in prompts) + len(prefix)
  width = -(-longest // 16) * 16  # a few bucketed shapes, not one compile per length
  model = Decoder(cfg)

  @jax.jit
  def score(params, tokens, valid, starts):
    positions = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - valid.astype(jnp.int32)
    logits, _ = model.apply({"params": params}, tokens, positions, valid=valid)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    # Position starts - 1 + i predicts prefix token i.
    idx = starts[:, None] - 1 + jnp.arange(len(prefix))[None, :]
    rows = jnp.take_along_axis(logp, idx[:, :, None], axis=1)  # [B, P, V]
    tgt = jnp.asarray(prefix, jnp.int32)[None, :, None]
    return jnp.take_along_axis(rows, jnp.broadcast_to(tgt, rows.shape[:2] + (1,)),
                               axis=2)[..., 0].sum(axis=1)

  out = []
  for lo in range(0, len(prompts), batch):
    part = prompts[lo:lo + batch]
    tokens = np.zeros((batch, width), np.int32)
    valid = np.zeros((batch, width), bool)
    starts = np.ones(batch, np.int32)
    for r, p in enumerate(part):
      seq = list(p) + prefix
      tokens[r, :len(seq)] = seq
      valid[r, :len(seq)] = True
      starts[r] = len(p)
    out.append(np.asarray(score(params, tokens, valid, starts), np.float64)[:len(part)])
  return np.concatenate(out)


