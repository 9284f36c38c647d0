"""What the KL term's reference policy costs an M-step: step time with loss.kl_coef > 0 (the
trainer computes `ref_logp` with the starting parameters, one more forward per step) against
the same step without it.

    python benchmarks/bench_kl_reference.py [--rounds 4] [--steps 10]

The production trainer (`aci_jax.train.runner.Trainer`) built from configs/default.py (the toy
policy, its M-step loss: ppo_clip + decision term), batch 32 rows of 128 tokens of random
tokens with a 32-token prompt; the variants (no KL; KL 0.2 on every token; KL 0.2 after the
decision token, the default's M-step) run interleaved, `--steps` steps each per round, so a busy
machine slows all alike. Prints the median ms/step and the ratio to the step without KL.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _batch(rng, rows, length, vocab):
  import numpy as np

  mask = np.zeros((rows, length), np.float32)
  mask[:, 32:] = 1.0
  return {"tokens": rng.integers(0, vocab, (rows, length)).astype(np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "valid": np.ones((rows, length), np.int32), "loss_mask": mask,
          "behaviour_logp": np.full((rows, length), -3.0, np.float32),
          "advantages": rng.standard_normal(rows).astype(np.float32),
          "decision_mask": (rng.random(rows) < 0.5).astype(np.float32)}


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rows", type=int, default=32)
  p.add_argument("--length", type=int, default=128)
  args = p.parse_args(argv)

  import jax
  import numpy as np

  from aci_jax.configuration import dataclass_from
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.runner import Trainer
  from configs.default import get_config

  rng = np.random.default_rng(0)
  runs = {}
  # the default's M-step has KL 0.2 after the decision token; the other two for comparison
  for name, kl, tokens in (("no KL", 0.0, "all"), ("KL 0.2, all tokens", 0.2, "all"),
                           ("KL 0.2, after dec.", 0.2, "after_decision")):
    c = get_config()
    with c.unlocked():
      c.loss.kl_coef = kl
      c.loss.kl_tokens = tokens
      c.train.batch_size = args.rows
    tr = Trainer(c, tempfile.mkdtemp(), loss_cfg=dataclass_from(LossConfig, c.loss, name="loss"))
    tr.restore_or_init()
    tr.train_step(_batch(rng, args.rows, args.length, c.model.vocab_size))  # compile
    runs[name] = dict(trainer=tr, times=[])
  for _ in range(args.rounds):
    for r in runs.values():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        r["trainer"].train_step(_batch(rng, args.rows, args.length, 259))
      r["times"].append((time.perf_counter() - t0) / args.steps)
  print(f"# {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"load average {os.getloadavg()[0]:.1f}, {args.rows} x {args.length} tokens per step")
  base = float(np.median(runs["no KL"]["times"]))
  print(f"{'variant':<20}{'ms/step':>9}{'ratio':>7}")
  for name, r in runs.items():
    med = float(np.median(r["times"]))
    print(f"{name:<20}{med * 1e3:>9.1f}{med / base:>7.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
