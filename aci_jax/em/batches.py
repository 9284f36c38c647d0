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


def bucket_length(n: int, minimum: int = 64) -> int:
  """Sequence lengths padded to powers of two (few distinct shapes -> few compilations)."""
  b = minimum
  while b < n:
    b *= 2
  return b


def ladder_length(n: int, minimum: int = 64, steps: int = 8) -> int:
  """`n` rounded up to a ladder of `steps` lengths per doubling (64, 72, 80, ..., 128, 144,
  ..., 512, 576, ...; all multiples of 8): at most 1/steps padding from the rounding (about
  half that on average), and a bounded number of shapes to compile (`steps` per octave: 48
  from 64 to 4,096 with the default)."""
  b = minimum
  while b < n:
    octave = 1 << (b.bit_length() - 1)  # the power of two at or below b
    b += max(octave // steps, 1)
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
  for i, t in enumerate(trajs):  # straight from the trajectories' arrays (no Python lists)
    p, r = len(t.prompt_ids), len(t.response_ids)
    out["tokens"][i, :p] = t.prompt_ids.array
    out["tokens"][i, p:p + r] = t.response_ids.array
    out["valid"][i, :p + r] = True
    out["loss_mask"][i, p:p + r] = t.loss_mask.array
    out["behaviour_logp"][i, p:p + r] = t.logp.array
  return out


def bucketed_minibatches(trajs: Sequence[Trajectory], advantages: Sequence[float],
                         decision: Sequence[bool], size: int, rng: np.random.Generator,
                         epochs: int = 1, *, length: int | None = None, window: int = 0,
                         min_length: int = 64) -> Iterator[dict[str, np.ndarray]]:
  """Mini-batches of exactly `size` rows, each padded only to its own longest row (rounded up
  by `ladder_length`), instead of every row to the iteration's longest trajectory.

  Per epoch the rows are shuffled, then sorted by length (within windows of `window`
  mini-batches; 0 = the whole epoch), cut into mini-batches of neighbouring lengths, and the
  mini-batches are visited in random order. Every row is used once per epoch; a mini-batch
  holds rows of similar length (ties in random order), so a step's gradient mixes fewer lengths
  than a uniform draw would. `length` (em.batch_length) fixes one length for all instead. The
  last mini-batch is filled with all-padding rows.
  """
  n = len(trajs)
  if n == 0:
    raise ValueError("no trajectories to build a batch from")
  adv = np.asarray(advantages, np.float32)
  dec = np.asarray(decision, np.float32)
  lens = np.asarray([len(t.prompt_ids) + len(t.response_ids) for t in trajs])
  span = size * window if window > 0 else n
  for _ in range(epochs):
    order = rng.permutation(n)
    groups = []
    for w in range(0, n, span):
      chunk = order[w:w + span]
      chunk = chunk[np.argsort(lens[chunk], kind="stable")]
      groups += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    for g in rng.permutation(len(groups)):
      idx = groups[g]
      t_len = length or ladder_length(int(lens[idx].max()), min_length)
      mb = build_batch([trajs[i] for i in idx], adv[idx], dec[idx], length=t_len)
      short = size - len(idx)
      if short:
        mb = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
              for k, v in mb.items()}
        mb["positions"][-short:] = np.arange(mb["positions"].shape[1])
      yield mb


def padding_ratio(batches) -> float:
  """Token slots / real tokens over an iterable of batches (1.0 = no padding)."""
  slots = real = 0
  for b in batches:
    slots += b["valid"].size
    real += int(b["valid"].sum())
  return slots / max(real, 1)
