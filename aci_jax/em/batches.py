"""Trajectories -> padded training batches (host side, numpy).

Layout of a row: prompt ids then response ids, right-padded. Token-aligned arrays (the
convention of `aci_jax.train.losses`): `loss_mask[t]` and `behaviour_logp[t]` describe token t.
Prompt tokens and tool-output tokens have loss mask 0; the behaviour log-prob of every response
token is the one recorded when it was sampled (or spliced).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from aci_jax.rollout.trajectory import Trajectory

KEYS = ("tokens", "positions", "valid", "loss_mask", "behaviour_logp", "advantages",
        "decision_mask")


def bucket_length(n: int, minimum: int = 64) -> int:
  """Sequence lengths padded to powers of two (few distinct shapes -> few compilations)."""
  b = minimum
  while b < n:
    b *= 2
  return b


def build_batch(trajs: Sequence[Trajectory], advantages: Sequence[float] | None = None,
                decision: Sequence[bool] | None = None, *, length: int | None = None,
                min_length: int = 64) -> dict[str, np.ndarray]:
  """[N, T] arrays for the train step; T = `length` or the bucketed longest row."""
  n = len(trajs)
  if n == 0:
    raise ValueError("no trajectories to build a batch from")
  longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
  t_len = length or bucket_length(longest, min_length)
  if longest > t_len:
    raise ValueError(f"a trajectory has {longest} tokens > batch length {t_len}")
  out = {
      "tokens": np.zeros((n, t_len), np.int32),
      "positions": np.broadcast_to(np.arange(t_len, dtype=np.int32), (n, t_len)).copy(),
      "valid": np.zeros((n, t_len), bool),
      "loss_mask": np.zeros((n, t_len), np.float32),
      "behaviour_logp": np.zeros((n, t_len), np.float32),
      "advantages": np.asarray(advantages if advantages is not None else np.zeros(n),
                               np.float32),
      "decision_mask": np.asarray(decision if decision is not None else np.zeros(n),
                                  np.float32),
  }
  for i, t in enumerate(trajs):
    p, r = len(t.prompt_ids), len(t.response_ids)
    out["tokens"][i, :p + r] = list(t.prompt_ids) + list(t.response_ids)
    out["valid"][i, :p + r] = True
    out["loss_mask"][i, p:p + r] = t.loss_mask
    out["behaviour_logp"][i, p:p + r] = t.logp
  return out


def minibatches(batch: dict[str, np.ndarray], size: int, rng: np.random.Generator,
                epochs: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled mini-batches of exactly `size` rows per epoch; the last one is filled with
  all-padding rows (loss mask 0, so they contribute nothing)."""
  n = batch["tokens"].shape[0]
  for _ in range(epochs):
    order = rng.permutation(n)
    for start in range(0, n, size):
      idx = order[start:start + size]
      mb = {k: v[idx] for k, v in batch.items()}
      short = size - len(idx)
      if short:
        mb = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in
              mb.items()}
        mb["positions"][-short:] = np.arange(mb["positions"].shape[1])
      yield mb
