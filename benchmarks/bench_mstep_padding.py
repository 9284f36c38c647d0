"""Token slots per real token of the M-step's batches: one padded length for the whole iteration
(the previous `build_batch` + `minibatches`) against length-bucketed mini-batches
(`bucketed_minibatches`), on synthetic rollouts with MATH-like lengths.

    python benchmarks/bench_mstep_padding.py [--rollouts 56000] [--batch 128]

Lengths: prompt uniform in [60, 300) tokens, response log-normal around 500 tokens (sigma 0.8),
capped so prompt + response <= 4,096 (the paper preset's capacity). Prints slots / real tokens
for both, their ratio, and the number of distinct sequence lengths (compiled train-step shapes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aci_jax.em.batches import bucket_length, bucketed_minibatches
from aci_jax.rollout.trajectory import Trajectory


def synthetic(n: int, rng: np.random.Generator, capacity: int = 4096) -> list[Trajectory]:
  out = []
  for i in range(n):
    p = int(rng.integers(60, 300))
    r = int(min(capacity - p, max(1, rng.lognormal(np.log(500), 0.8))))
    out.append(Trajectory(prompt_index=i, sample_index=0, mode="native", prompt_ids=[1] * p,
                          response_ids=[2] * r, logp=[0.0] * r, source=[0] * r, cells=[],
                          stop_reason="eos", text=""))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rollouts", type=int, default=56000)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  if a.rollouts < 1 or a.batch < 1:
    ap.error("--rollouts and --batch must be positive")
  rng = np.random.default_rng(a.seed)
  trajs = synthetic(a.rollouts, rng)
  lens = np.array([len(t.prompt_ids) + len(t.response_ids) for t in trajs])
  real = int(lens.sum())
  n_batches = -(-len(trajs) // a.batch)
  old_slots = n_batches * a.batch * bucket_length(int(lens.max()))
  t0 = time.perf_counter()
  slots, shapes = 0, set()
  zeros = np.zeros(len(trajs))
  for mb in bucketed_minibatches(trajs, zeros, zeros, a.batch, np.random.default_rng(1)):
    slots += mb["valid"].size
    shapes.add(mb["tokens"].shape[1])
  dt = time.perf_counter() - t0
  print(f"{len(trajs)} rollouts, {real / len(trajs):.0f} tokens on average, longest "
        f"{lens.max()}, {n_batches} mini-batches of {a.batch}")
  print(f"one length for all (previous): {old_slots / real:.2f} slots per real token")
  print(f"bucketed by length:            {slots / real:.3f} slots per real token "
        f"({len(shapes)} distinct lengths; host time {dt:.1f} s)")
  print(f"ratio: {old_slots / slots:.2f}x fewer token slots")


if __name__ == "__main__":
  main()
