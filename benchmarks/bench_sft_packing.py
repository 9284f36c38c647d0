"""Warm-up SFT step time of the embedded default: padded rows vs packed rows, logits remat on/off.

    python benchmarks/bench_sft_packing.py [--rounds 4] [--steps 15]

The production path (`aci_jax.train.runner.Trainer` built from configs/default.py, the toy's
8,000 warm-up demonstrations through `aci_jax.data.sft.SFTData`, batch 32, seq_len 96): one
trainer per variant, every row-count bucket compiled first, then `--rounds` rounds in which each
variant runs `--steps` steps in turn (interleaved, so a busy machine slows every variant alike).
Prints the median seconds per step and the ratio against the previous default (logits remat on,
32 padded rows of 96 tokens). Packed variants train on the same 32 demos per step; "unrolled"
is `train.scan_layers=False` (the default config's setting since 2026-12-03).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

VARIANTS = {  # name: (logprob_remat, pack_len, scan_layers)
    "remat, 32x96 (was)": (True, 0, True),
    "no remat, 32x96": (False, 0, True),
    "no remat, packed 192": (False, 192, True),
    "no remat, packed 288": (False, 288, True),
    "packed 192, unrolled": (False, 192, False),
}


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=15)
  args = p.parse_args(argv)

  import jax
  import numpy as np

  from aci_jax.data import toy
  from aci_jax.data.char_tokenizer import char_tokenizer
  from aci_jax.data.sft import build_sft_data
  from aci_jax.train.runner import Trainer
  from configs.default import get_config

  tok = char_tokenizer()
  train = toy.make_problems(2000, split="train", seed=0)
  recs = [{"prompt": d["prompt"], "response": d["response"]}
          for d in toy.make_demonstrations(train, code_fraction=0.1, seed=0)]
  runs = {}
  for name, (remat, pack, scan) in VARIANTS.items():
    c = get_config()
    with c.unlocked():
      c.mode, c.loss.policy, c.loss.decision_coef = "sft", "sft_nll", 0.0
      c.optim.lr, c.optim.decay_steps, c.optim.warmup_steps = 3e-3, 2000, 100
      c.optim.clip_norm = 0.0
      c.train.logprob_remat = remat
      c.train.scan_layers = scan
    data, _ = build_sft_data(recs, tok, batch_size=32, seq_len=96, seed=0, pack_len=pack,
                             row_multiple=4)
    trainer = Trainer(c, tempfile.mkdtemp())
    trainer.restore_or_init()
    cursor = 0
    for _ in range(8):  # compile every row-count bucket
      batch, cursor = data.batch(cursor)
      trainer.train_step(batch)
    runs[name] = dict(trainer=trainer, data=data, cursor=cursor, times=[], rows=[])
  for _ in range(args.rounds):
    for r in runs.values():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        batch, r["cursor"] = r["data"].batch(r["cursor"])
        r["trainer"].train_step(batch)
        r["rows"].append(batch["tokens"].shape[0])
      r["times"].append((time.perf_counter() - t0) / args.steps)
  print(f"# {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"load average {os.getloadavg()[0]:.1f}")
  base = float(np.median(runs["remat, 32x96 (was)"]["times"]))
  print(f"{'variant':<24}{'ms/step':>9}{'steps/s':>9}{'ratio':>7}{'rows':>6}")
  for name, r in runs.items():
    med = float(np.median(r["times"]))
    print(f"{name:<24}{med * 1e3:>9.1f}{1 / med:>9.2f}{base / med:>7.2f}{np.mean(r['rows']):>6.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
