"""The warm-up step with and without the tail's moving average (`warmup.average_decay`).

    python benchmarks/bench_tail_average.py [--steps 20]

The embedded default's warm-up (configs/default.py, seed 2's demos, packed 192-token rows)
trained in two Trainers, one whose optimizer keeps the average from step 0 (average_start 0, so
every timed step updates it) and one without, interleaved A, B, A, B so that drift in the
machine's speed hits both; prints ms/step (median of each pass) and the ratio. Run it on an
idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from aci_jax.data.sft import build_sft_data, write_jsonl  # noqa: E402
from aci_jax.configuration import seed_for  # noqa: E402
from aci_jax.em import modes as em  # noqa: E402
from aci_jax.train.modes import _trainer_config  # noqa: E402  pylint: disable=protected-access
from aci_jax.train.runner import Trainer  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=20)
  a = p.parse_args()
  c = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
  with c.unlocked():
    c.seed, c.progress, c.checkpoint.async_save = 2, False, False
  tmp = tempfile.mkdtemp(prefix="bench_tail_average_")
  train, _ = em._problems(c)  # pylint: disable=protected-access
  data_path = os.path.join(tmp, "demos.jsonl")
  write_jsonl(data_path, em._warmup_demos(c, train))  # pylint: disable=protected-access
  tok, _ = em._tokenizer(c, os.path.join(tmp, "run"))  # pylint: disable=protected-access
  base = em.warmup_settings(c, data_path, "")
  data, _ = build_sft_data(base.data, tok, batch_size=base.batch_size, seq_len=base.seq_len,
                           seed=seed_for(c, "order"), system=base.system,
                           pack_len=base.pack_len, row_multiple=4)
  trainers, cursors = {}, {}
  for name, decay in (("average", 0.995), ("none", 0.0)):
    s = dataclasses.replace(base, optim=dataclasses.replace(base.optim, average_decay=decay,
                                                            average_start=0))
    t = Trainer(_trainer_config(c, s), os.path.join(tmp, name), loss_cfg=s.loss)
    t.restore_or_init()
    batch, cursors[name] = data.batch(0)
    t.train_step(batch)  # compile
    trainers[name] = t
  times = {k: [] for k in trainers}
  for _ in range(2):
    for name, t in trainers.items():
      per = []
      for _ in range(a.steps):
        batch, cursors[name] = data.batch(cursors[name])
        per.append(t.train_step(batch)["perf/step_seconds"])
      times[name].append(statistics.median(per) * 1e3)
  for name, ms in times.items():
    print(f"{name:8s} ms/step per pass: " + ", ".join(f"{x:.0f}" for x in ms))
  avg, none = statistics.mean(times["average"]), statistics.mean(times["none"])
  print(f"average / none: {avg / none:.3f} ({avg:.0f} vs {none:.0f} ms/step; "
        f"{jax.device_count()} CPU device(s))")


if __name__ == "__main__":
  main()
