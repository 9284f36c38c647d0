"""Would an average of the warm-up's tail probe better than its parameters? Measured on a run
that did not keep one (docs/em_log.md, "Weight averaging of the gate's tail").

    python -m aci_jax.eval.tail_average RUN --start 3000 --steps 500 [--every 250]
        [--decays 0.99,0.995,0.998] [--n 256] [--gate add:reason,mul:code]

Resumes RUN's warm-up from its checkpoint `--start` in a temporary directory (RUN is only read:
config.json, tokenizer/, warmup/demos.jsonl, warmup/checkpoints/START), trains `--steps` more
steps exactly as the run did (its data order and cursor, its learning-rate schedule: past the
cosine's end, the final lr), and after every step updates, in float64 on the host, an
exponential moving average of the parameters per decay (each starting at the checkpoint) and
their uniform average. Every `--every` steps it probes the parameters and each average with
the warm-up gate's teacher-forced probes (aci_jax/eval/warmup_gate.py) on `--n` held-out
problems per probe (default: the run's `warmup.gate`) and prints a markdown row of each probe's
exact-match rate and the weakest. `warmup.average_decay` keeps the same kind of average inside a
run (aci_jax/train/optim.py); this tool answers the question for runs made without it (on a
run that kept one, its averages are the tool's own, from `--start`, beside the run's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("run", help="a toy run's workdir (config.json, warmup/checkpoints/START)")
  p.add_argument("--start", type=int, required=True, help="the checkpoint step to resume")
  p.add_argument("--steps", type=int, required=True, help="steps to train after it")
  p.add_argument("--every", type=int, default=250, help="probe every this many steps")
  p.add_argument("--decays", default="0.99,0.995,0.998", help="comma-separated EMA decays")
  p.add_argument("--n", type=int, default=256, help="held-out problems per probe")
  p.add_argument("--gate", default="", help="comma-separated family:kind probes (default: "
                 "the run's warmup.gate)")
  a = p.parse_args(argv)
  try:
    a.decays = [float(x) for x in a.decays.split(",") if x]
  except ValueError:
    p.error(f"--decays must be comma-separated numbers, got {a.decays!r}")
  if not a.decays or not all(0.0 < d < 1.0 for d in a.decays):
    p.error(f"every decay must lie in (0, 1), got {a.decays}")
  if a.steps <= 0 or a.every <= 0 or a.n <= 0 or a.start < 0:
    p.error("--steps, --every and --n must be > 0 and --start >= 0")
  return a


def _row(step, name, rates):
  return (f"| {step} | {name} | " + " | ".join(f"{v:.3f}" for v in rates.values())
          + f" | {min(rates.values()):.3f} |")


def main(argv=None) -> int:
  a = _parse(argv)
  import jax
  import numpy as np

  from aci_jax.configuration import seed_for
  from aci_jax.data.sft import build_sft_data
  from aci_jax.em import modes
  from aci_jax.eval.warmup_gate import build_gate, probe_setup, read_run_config
  from aci_jax.eval.warmup_probe import committed_steps
  from aci_jax.train.modes import _trainer_config  # pylint: disable=protected-access
  from aci_jax.train.runner import Trainer

  config = read_run_config(a.run, "tail_average")
  ckpts = os.path.join(a.run, "warmup", "checkpoints")
  if a.start not in committed_steps(ckpts):
    raise SystemExit(f"tail_average: no warm-up checkpoint {a.start} under {a.run} (it has "
                     f"{committed_steps(ckpts)})")
  with config.unlocked():
    config.progress = False
  train, tok = probe_setup(config, a.run, a.gate, a.n, "tail_average")
  s = modes.warmup_settings(config, os.path.join(a.run, "warmup", "demos.jsonl"), "")
  scratch = tempfile.mkdtemp(prefix="aci_tail_average_")
  try:
    shutil.copytree(os.path.join(ckpts, str(a.start)),
                    os.path.join(scratch, "checkpoints", str(a.start)))
    trainer = Trainer(_trainer_config(config, s), scratch, loss_cfg=s.loss)
    trainer.restore_or_init()
    gate = build_gate(config, tok, trainer.model_cfg, train)
    data, _ = build_sft_data(s.data, tok, batch_size=s.batch_size, seq_len=s.seq_len,
                             seed=seed_for(config, "order"), system=s.system,
                             pack_len=s.pack_len, row_multiple=4)
    cursor = int(trainer.meta.get("data_cursor", 0))

    def host():
      return jax.tree.map(lambda x: np.asarray(x, np.float64),
                          jax.device_get(trainer.state.params))

    def probe(p):
      return gate.check(jax.tree.map(lambda x: np.asarray(x, np.float32), p))[1]

    current = host()
    averages = {f"EMA {d}": current for d in a.decays}
    uniform, n = current, 1
    rates = probe(current)
    print("| step | parameters | " + " | ".join(rates) + " | weakest |\n|---|---|"
          + "---|" * (len(rates) + 1))
    print(_row(a.start, "parameters", rates), flush=True)
    while trainer.step < a.start + a.steps:
      batch, cursor = data.batch(cursor)
      trainer.train_step(batch)
      current = host()
      averages = {k: jax.tree.map(lambda e, c, d=d: d * e + (1 - d) * c, v, current)
                  for (k, v), d in zip(averages.items(), a.decays)}
      uniform = jax.tree.map(lambda u, c: (u * n + c) / (n + 1), uniform, current)
      n += 1
      if (trainer.step - a.start) % a.every == 0 or trainer.step == a.start + a.steps:
        print(_row(trainer.step, "parameters", probe(current)), flush=True)
        for k, v in averages.items():
          print(_row(trainer.step, k, probe(v)), flush=True)
        print(_row(trainer.step, f"uniform from {a.start}", probe(uniform)), flush=True)
    trainer.close()
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
