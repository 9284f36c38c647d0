"""Host bytes per rollout token of an E-step: holding its rollouts, the multi-host gather's
payload, and building the M-step's mini-batches; the compact `Trajectory` against the record
it replaced (Python lists of ints and floats, measured in the same run).

    python benchmarks/bench_host_memory.py [--rollouts 10000] [--samples 16] [--batch 128]

Synthetic E-step: `rollouts / samples` queries with prompts log-normal around 200 tokens; per
rollout a response log-normal around 800 tokens (sigma 0.6, capped at 4,096 with the prompt),
token ids uniform over a 151k vocabulary, float32 behaviour log-probs; a third of the rollouts
forced into code (a 3-token forced prefix and 0-4 cells of ~150 characters of code, each
answered by ~40 tool-output tokens), decoded text of 3.6 characters per token. Every rollout
is built the way the scheduler builds it (from Python lists of the sampler's outputs).

(a) held: tracemalloc's count of bytes still allocated after building every trajectory (the
    record, its token fields, text, cells and meta), per response token.
(b) gather: pickled bytes of what `EMLoop.gather` all-gathers from one process, every rollout
    counted as kept (the old payload: the trajectories themselves, pickled).
(c) M-step: one epoch of `bucketed_minibatches` (the old row fill read Python lists): wall
    seconds, and tracemalloc's peak above the held rollouts while building it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import pickle
import time
import tracemalloc

import numpy as np

from aci_jax.em import batches as batches_module
from aci_jax.em.loop import gather_payload
from aci_jax.rollout.trajectory import SRC_ENV, SRC_FORCED, Cell, Trajectory, unpack

VOCAB = 151_000


@dataclasses.dataclass
class ListTrajectory:
  """The record before issue 15 (same fields, Python lists), for the "before" figures only."""

  prompt_index: int
  sample_index: int
  mode: str
  prompt_ids: list[int]
  response_ids: list[int]
  logp: list[float]
  source: list[int]
  cells: list[Cell]
  stop_reason: str
  text: str
  reward: float | None = None
  meta: dict = dataclasses.field(default_factory=dict)

  @property
  def loss_mask(self) -> list[int]:
    return [0 if s == SRC_ENV else 1 for s in self.source]


def list_build_batch(trajs, advantages=None, decision=None, *, length=None, min_length=64):
  """`em.batches.build_batch` as it was before issue 15 (rows filled from Python lists)."""
  n = len(trajs)
  longest = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
  t_len = length or batches_module.bucket_length(longest, min_length)
  out = {
      "tokens": np.zeros((n, t_len), np.int32),
      "positions": np.broadcast_to(np.arange(t_len, dtype=np.int32), (n, t_len)).copy(),
      "valid": np.zeros((n, t_len), bool),
      "loss_mask": np.zeros((n, t_len), np.float32),
      "behaviour_logp": np.zeros((n, t_len), np.float32),
      "advantages": np.asarray(advantages, np.float32),
      "decision_mask": np.asarray(decision, np.float32),
  }
  for i, t in enumerate(trajs):
    p, r = len(t.prompt_ids), len(t.response_ids)
    out["tokens"][i, :p + r] = list(t.prompt_ids) + list(t.response_ids)
    out["valid"][i, :p + r] = True
    out["loss_mask"][i, p:p + r] = t.loss_mask
    out["behaviour_logp"][i, p:p + r] = t.logp
  return out


def sampler_outputs(n: int, samples: int, rng: np.random.Generator) -> tuple[list, list]:
  """(prompts as the requests hold them, per-rollout raw outputs as numpy arrays)."""
  n_q = -(-n // samples)
  prompts = [rng.integers(0, VOCAB, int(np.clip(rng.lognormal(np.log(200), 0.3), 32, 1024)))
             .tolist() for _ in range(n_q)]
  corpus = "".join(chr(c) for c in rng.integers(32, 127, 200_000))
  out = []
  for i in range(n):
    q = i // samples
    mode = ("native", "cot", "code")[i % 3]
    r = int(np.clip(rng.lognormal(np.log(800), 0.6), 16, 4096 - len(prompts[q])))
    tokens = rng.integers(0, VOCAB, r).astype(np.int32)
    logp = (-rng.exponential(0.3, r)).astype(np.float32)
    source = np.zeros(r, np.int8)
    cells = []
    if mode == "code":
      source[:3] = SRC_FORCED
      for _ in range(int(rng.integers(0, 5))):
        at = int(rng.integers(3, max(r - 40, 4)))
        source[at:at + 40] = SRC_ENV
        cells.append((int(rng.integers(0, 50_000)), 150, 60))
    n_chars = int(3.6 * r)
    out.append((q, i % samples, mode, tokens, logp, source, cells, int(rng.integers(0, 100_000)),
                n_chars))
  return prompts, [corpus] + out


def build(cls, prompts, raw, copy_prompt: bool):
  """Every rollout's record as the scheduler makes it (`_finish`): lists of the outputs."""
  corpus, rows = raw[0], raw[1:]
  out = []
  for q, k, mode, tokens, logp, source, cells, at, n_chars in rows:
    prompt = prompts[q]
    cell_objs = [Cell(corpus[c:c + n_code], corpus[c + n_code:c + n_code + n_out], "ok", 0.1)
                 for c, n_code, n_out in cells]
    out.append(cls(prompt_index=q, sample_index=k, mode=mode,
                   prompt_ids=list(prompt) if copy_prompt else prompt,
                   response_ids=[int(t) for t in tokens], logp=[float(x) for x in logp],
                   source=[int(s) for s in source], cells=cell_objs, stop_reason="eos",
                   text=corpus[at:at + n_chars], reward=float(k % 2),
                   meta={"grade_status": "ok"}))
  return out


def held_bytes(make) -> tuple[list, int]:
  gc.collect()
  tracemalloc.start()
  before = tracemalloc.get_traced_memory()[0]
  obj = make()
  gc.collect()
  held = tracemalloc.get_traced_memory()[0] - before
  tracemalloc.stop()
  return obj, held


def mstep(trajs, adv, dec, size: int, build_fn) -> tuple[float, int, int]:
  """(seconds for an epoch of mini-batches, tracemalloc peak above the start, batches)."""
  original = batches_module.build_batch
  batches_module.build_batch = build_fn
  try:
    def epoch():
      n = 0
      for mb in batches_module.bucketed_minibatches(trajs, adv, dec, size,
                                                    np.random.default_rng(0)):
        n += int(mb["valid"].sum() > 0)
      return n
    t0 = time.perf_counter()
    epoch()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    n = epoch()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
  finally:
    batches_module.build_batch = original
  return seconds, peak, n


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rollouts", type=int, default=10_000)
  ap.add_argument("--samples", type=int, default=16, help="rollouts per query (prompt)")
  ap.add_argument("--batch", type=int, default=128, help="M-step mini-batch rows")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  prompts, raw = sampler_outputs(args.rollouts, args.samples, rng)
  n = args.rollouts
  tokens = sum(len(r[3]) for r in raw[1:])
  prompt_tokens = sum(len(prompts[r[0]]) for r in raw[1:])
  adv = rng.standard_normal(n).tolist()
  dec = (rng.random(n) > 0.5).tolist()
  print(f"synthetic E-step: {n:,} rollouts of {len(prompts):,} prompts; {tokens:,} response "
        f"tokens ({tokens / n:.0f} per rollout), {prompt_tokens:,} prompt tokens")

  rows = {}
  for name, cls, copy_prompt in (("lists (before)", ListTrajectory, True),
                                 ("compact (after)", Trajectory, False)):
    trajs, held = held_bytes(lambda: build(cls, prompts, raw, copy_prompt))
    native = [(t.prompt_index, bool(t.cells), float(t.reward)) for t in trajs
              if t.mode == "native"]
    if cls is Trajectory:
      payload = gather_payload(trajs, adv, dec, [], native)
      blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
      back = pickle.loads(blob)
      assert unpack(back[0]) == trajs and back[1].tolist() == adv and back[2].tolist() == dec
      seconds, peak, nb = mstep(trajs, adv, dec, args.batch, batches_module.build_batch)
    else:  # what the gather sent before: the trajectories themselves, pickled
      blob = pickle.dumps((list(zip(trajs, adv, dec)), [], native),
                          protocol=pickle.HIGHEST_PROTOCOL)
      seconds, peak, nb = mstep(trajs, adv, dec, args.batch, list_build_batch)
    rows[name] = (held / tokens, len(blob) / tokens, seconds, peak / 2**20)
    del trajs, blob
    gc.collect()

  print(f"\n{'record':<16} {'held B/token':>13} {'gather B/token':>15} "
        f"{'M-step epoch s':>15} {'M-step peak MiB':>16}")
  for name, (h, g, s, p) in rows.items():
    print(f"{name:<16} {h:>13.1f} {g:>15.1f} {s:>15.2f} {p:>16.1f}")
  (h0, g0, s0, p0), (h1, g1, s1, p1) = rows.values()
  print(f"{'before / after':<16} {h0 / h1:>12.1f}x {g0 / g1:>14.1f}x {s0 / s1:>14.1f}x "
        f"{p0 / p1:>15.2f}x")
  print(f"\nheld at the paper's 168k rollouts x 2k tokens: {h0 * 168e3 * 2e3 / 1e9:.1f} GB "
        f"before, {h1 * 168e3 * 2e3 / 1e9:.1f} GB after ({nb} mini-batches of {args.batch} "
        f"rows per epoch here)")


if __name__ == "__main__":
  main()
