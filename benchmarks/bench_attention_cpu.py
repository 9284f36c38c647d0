"""Dense attention on XLA's CPU backend: the head-major layout `dense_attention` takes on CPU
against the einsum layout the TPU and GPU programs take, on the toy's warm-up shapes.

    python benchmarks/bench_attention_cpu.py [--repeats 15] [--steps 20]

1. Attention alone, forward + backward (jit of the gradient of a weighted sum of the output),
   at the default's warm-up shape: 12 packed rows of 192 tokens, 4 heads of 32, packing segments
   of 40-110 tokens. Prints ms for each layout, the ratio, and the largest difference between
   their outputs and gradients.
2. The whole production warm-up step (configs/default.py's model, packed rows of 192, AdamW)
   with `dense_attention`'s CPU branch as it is and patched to the other layout, interleaved
   (A, B, A, B) so that drift in the machine's speed hits both. Prints ms/step and the ratio.

Run it on an idle machine: XLA uses every core, so anything beside it moves both figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from aci_jax.model import attention as A  # noqa: E402
from timing import median_time  # noqa: E402

LAYOUTS = ("head_major", "einsum")


def _layout(name):
  return lambda *a: A._dense(*a, head_major=name == "head_major")  # pylint: disable=protected-access


def _packed_case(rng, b=12, t=192, h=4, dh=32):
  q, k, v, w = (jnp.asarray(rng.standard_normal((b, t, h, dh)), jnp.float32) for _ in range(4))
  seg = np.zeros((b, t), np.int32)
  for i in range(b):
    pos, s = 0, 1
    while pos < t - 40:
      n = min(int(rng.integers(40, 111)), t - pos)
      seg[i, pos:pos + n] = s
      pos, s = pos + n, s + 1
  slot = jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy())
  seg = jnp.asarray(seg)
  valid = seg > 0
  return (q, k, v), (slot, valid, seg, seg), w * valid[:, :, None, None]


def attention_only(repeats: int):
  xs, ints, w = _packed_case(np.random.default_rng(0))
  res = {}
  for name in LAYOUTS:
    fn = _layout(name)
    f = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v, *ints) * w), (0, 1, 2)))
    res[name] = jax.block_until_ready(f(*xs))
    res[name + "_ms"] = median_time(lambda: jax.block_until_ready(f(*xs)), repeats) * 1e3
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(res["head_major"]), jax.tree.leaves(res["einsum"])))
  hm, es = res["head_major_ms"], res["einsum_ms"]
  print(f"attention fwd+bwd [12, 192, 4, 32]: head_major {hm:.2f} ms, einsum {es:.2f} ms, "
        f"ratio {es / hm:.2f}x; max |difference| {diff:.1e}", flush=True)


def warmup_step(steps: int):
  from aci_jax.data import toy
  from aci_jax.data.char_tokenizer import char_tokenizer
  from aci_jax.data.sft import build_sft_data
  from aci_jax.train.runner import Trainer
  from configs.default import get_config

  c = get_config()
  w = c.warmup
  with c.unlocked():
    c.mode, c.loss.policy, c.loss.decision_coef = "sft", "sft_nll", 0.0
    c.optim.lr, c.optim.decay_steps, c.optim.warmup_steps = w.lr, w.steps, w.warmup_steps
    c.optim.clip_norm = w.clip_norm
  problems = toy.make_problems(2000, split="train", seed=0)
  recs = [{"prompt": d["prompt"], "response": d["response"]}
          for d in toy.make_demonstrations(problems, code_fraction=0.1, seed=0)]
  data, _ = build_sft_data(recs, char_tokenizer(), batch_size=w.batch_size, seq_len=w.seq_len,
                           seed=0, pack_len=w.pack_len, row_multiple=4)
  original = A._dense  # pylint: disable=protected-access
  trainers = {}
  for name in LAYOUTS:
    A._dense = (original if name == "head_major" else  # pylint: disable=protected-access
                lambda *a, head_major, **kw: original(*a, head_major=False, **kw))
    trainers[name] = Trainer(c, tempfile.mkdtemp())
    trainers[name].restore_or_init()
    cursor = 0
    for _ in range(3):  # compile, with this layout patched in
      batch, cursor = data.batch(cursor)
      trainers[name].train_step(batch)
  A._dense = original  # pylint: disable=protected-access
  times = {n: [] for n in LAYOUTS}
  cursor = 0
  for _ in range(2):
    for name in LAYOUTS:
      t0 = time.perf_counter()
      for _ in range(steps):
        batch, cursor = data.batch(cursor)
        trainers[name].train_step(batch)
      jax.block_until_ready(jax.tree.leaves(trainers[name].state))
      times[name].append((time.perf_counter() - t0) / steps * 1e3)
  hm, es = statistics.median(times["head_major"]), statistics.median(times["einsum"])
  print(f"warm-up step (default model, packed 192): head_major {hm:.0f} ms, einsum {es:.0f} ms, "
        f"ratio {es / hm:.2f}x  (per pass: {times})", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--steps", type=int, default=20, help="warm-up steps per timed pass")
  args = ap.parse_args()
  attention_only(args.repeats)
  warmup_step(args.steps)


if __name__ == "__main__":
  main()
