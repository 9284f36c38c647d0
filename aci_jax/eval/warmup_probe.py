"""The warm-up's skills along its training: teacher-forced probes of held-out code demos per
family, at every warm-up checkpoint (issue 16: does the warm-up acquire the copy skill, when?).

    # train the embedded default's warm-up (the production path: em.modes.warmup_settings and
    # train.modes.run_sft), keeping a checkpoint every 250 steps, then probe each checkpoint
    python -m aci_jax.eval.warmup_probe --config configs/default.py --workdir W --every 250 \\
        [--config.seed=1]
    # probe the checkpoints of an existing warm-up (W/warmup/checkpoints, e.g. while it trains)
    python -m aci_jax.eval.warmup_probe --config configs/default.py --workdir W --probe_only

Per family, on `--n` held-out problems (split "test", seed 0: the same problems for every run),
each read from one forward pass, no sampling:

- `copy`: after a correct code demo up to `\\boxed{` (cell, output block), greedy decoding
  reproduces `<answer>}` exactly: the skill EM's code rollouts need.
- `copy_digits`: the fraction of those answer tokens predicted right (each from the true
  preceding ones), a continuous view of the same skill.
- `cell`: after the prompt and "```python\\n", the demo's cell (`print(...)` up to its
  "```output" stop marker) is reproduced exactly.
- `guess`: (families whose reasoning demo states `<expr> = <answer>`, i.e. `mul`, `powmod`) the
  fraction of problems whose boxed answer after the cell is wrong *and* equal token by token to
  what the policy predicts after its own prose "<expr> = ": the box repeats the prose guess
  instead of the printed output.
- `p_code`: the mean native probability of opening a cell at T = 1
  (`decision_probe.prefix_logprob`).
- `printed_<L>`, L = 2..6: `copy` with the output block replaced by a random L-digit value
  (same for every run): does the policy copy whatever is printed, at that length, or only what
  it could also compute or recall? (`mul` prints 5-6 digits; the other families 1-3.)

`--triggered_code mul=400` is a controlled change of the warm-up data: that many extra `mul`
code demos whose prompt asks for code (`toy.ask_for_code`, the rare-code regime's trigger, so the
un-prompted code rate stays that of the default), on the first training problems of `mul`.

Results go to W/warmup_probe.json ({"<step>": {family: {probe: value}}}) and a table on stdout.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import sys
import time
from typing import Sequence

import numpy as np

from aci_jax import fileio
from aci_jax.data import toy
from aci_jax.eval.teacher_forcing import greedy_next_fn, teacher_forced_argmax
from aci_jax.model import ModelConfig

PRINTED_LENGTHS = (2, 3, 4, 5, 6)


# ------------------------------------------------------------------------------- probes


def probe_items(tokenizer, family: str, n: int, seed: int = 0) -> dict:
  """The probe's contexts/targets for `n` held-out problems of `family` (token id lists)."""
  problems = toy.family_problems(family, n, split="test", seed=seed)
  fence = "```python\n"
  items = {"copy_ctx": [], "copy_tgt": [], "cell_ctx": [], "cell_tgt": [], "guess_ctx": [],
           "prompt": [], **{f"printed_{n}": ([], []) for n in PRINTED_LENGTHS}}
  rng = random.Random(f"aci_jax.warmup_probe:{family}:{seed}")
  for p in problems:
    prompt = toy.prompt_ids(tokenizer, p["problem"])
    code = toy.code_response(p)
    box = code.index("\\boxed{") + len("\\boxed{")
    items["prompt"].append(prompt)
    items["copy_ctx"].append(prompt + tokenizer.encode(code[:box]))
    items["copy_tgt"].append(tokenizer.encode(f"{p['answer']}}}"))
    items["cell_ctx"].append(prompt + tokenizer.encode(fence))
    items["cell_tgt"].append(tokenizer.encode(toy.cell_text(p)))
    for length in PRINTED_LENGTHS:
      v = str(rng.randrange(10 ** (length - 1), 10 ** length))
      ctx, tgt = items[f"printed_{length}"]
      printed = code[:box].replace(f"\n{p['answer']}\n", f"\n{v}\n")
      ctx.append(prompt + tokenizer.encode(printed))
      tgt.append(tokenizer.encode(f"{v}}}"))
    cot = toy.cot_response(p)
    stated = f" = {p['answer']}."
    if stated in cot:  # a prose guess "<expr> = <answer>." precedes the box
      items["guess_ctx"].append(prompt + tokenizer.encode(cot[:cot.index(stated) + 3]))
  if len(items["guess_ctx"]) != len(problems):
    items["guess_ctx"] = []
  return items


def probe(cfg: ModelConfig, params, tokenizer, families: Sequence[str], n: int = 100,
          seed: int = 0, items: dict | None = None) -> dict:
  """{family: {probe: value}} for one policy (the probes of the module docstring)."""
  from aci_jax.eval.decision_probe import prefix_logprob

  fn = greedy_next_fn(cfg)
  fence = tokenizer.encode("```python\n")
  out = {}
  for fam in families:
    it = (items or {}).get(fam) or probe_items(tokenizer, fam, n, seed)
    tgt = it["copy_tgt"]
    box = teacher_forced_argmax(cfg, params, it["copy_ctx"], tgt, fn=fn)
    right = [np.asarray(t) == b for t, b in zip(tgt, box)]
    cell = teacher_forced_argmax(cfg, params, it["cell_ctx"], it["cell_tgt"], fn=fn)
    r = {"copy": float(np.mean([x.all() for x in right])),
         # the closing brace is not a digit: score the answer's tokens only
         "copy_digits": float(np.mean(np.concatenate([x[:-1] for x in right]))),
         "cell": float(np.mean([np.array_equal(c, t) for c, t in zip(cell, it["cell_tgt"])]))}
    if it["guess_ctx"]:
      prose = teacher_forced_argmax(cfg, params, it["guess_ctx"], [t[:-1] for t in tgt], fn=fn)
      r["guess"] = float(np.mean([not x.all() and np.array_equal(b[:-1], g)
                                  for x, b, g in zip(right, box, prose)]))
    for length in PRINTED_LENGTHS:
      ctx, t = it[f"printed_{length}"]
      pred = teacher_forced_argmax(cfg, params, ctx, t, fn=fn)
      r[f"printed_{length}"] = float(np.mean([np.array_equal(a, b) for a, b in zip(pred, t)]))
    r["p_code"] = float(np.mean(np.exp(prefix_logprob(cfg, params, it["prompt"], fence))))
    out[fam] = r
  return out


# ------------------------------------------------------------------------- checkpoints


def _settings(config, workdir: str):
  from aci_jax.em.modes import warmup_settings

  return warmup_settings(config, fileio.join(workdir, "warmup", "demos.jsonl"),
                         fileio.join(workdir, "warmup", "hf"))


def committed_steps(ckpt_dir: str) -> list[int]:
  """Steps of the finished checkpoints under `ckpt_dir`, read without an orbax manager (a
  manager cleans up temporary directories: it must not touch those of a run still saving)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()
                and os.path.exists(os.path.join(ckpt_dir, d, "_CHECKPOINT_METADATA")))


def restore_params(config, workdir: str, step: int):
  """The policy parameters of warm-up checkpoint `step` of `workdir` (the moving average, for
  a warm-up that keeps one)."""
  import orbax.checkpoint as ocp

  from aci_jax.configuration import dataclass_from
  from aci_jax.parallel.mesh import MeshConfig, make_mesh
  from aci_jax.train.optim import make_optimizer, policy_params
  from aci_jax.train.runner import model_config
  from aci_jax.train.step import abstract_train_state

  s = _settings(config, workdir)
  model_cfg, _ = model_config(config)
  optimizer, _ = make_optimizer(s.optim)
  mesh = make_mesh(dataclass_from(MeshConfig, config.mesh, name="mesh"))
  abstract, _ = abstract_train_state(model_cfg, optimizer, mesh)
  path = os.path.join(os.path.abspath(workdir), "warmup", "checkpoints", str(step), "state")
  state = ocp.StandardCheckpointer().restore(path, abstract)
  return model_cfg, policy_params(state)


def probe_checkpoints(config, workdir: str, *, n: int = 100) -> dict:
  """Probes every committed warm-up checkpoint of `workdir` not yet in W/warmup_probe.json;
  returns (and writes) the whole {step: results} record."""
  from aci_jax.data.char_tokenizer import char_tokenizer

  out_path = os.path.join(workdir, "warmup_probe.json")
  record = json.load(open(out_path)) if os.path.exists(out_path) else {}
  tok = char_tokenizer()
  families = tuple(config.task.families)
  items = {f: probe_items(tok, f, n) for f in families}
  for step in committed_steps(os.path.join(workdir, "warmup", "checkpoints")):
    if str(step) in record:
      continue
    cfg, params = restore_params(config, workdir, step)
    result = probe(cfg, params, tok, families, n, items=items)
    # Merge into what is on disk now: a `--probe_only` run beside a training run that probes
    # at its end must not drop the other's steps.
    if os.path.exists(out_path):
      record = {**json.load(open(out_path)), **record}
    record[str(step)] = result
    with open(out_path + ".tmp", "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(out_path + ".tmp", out_path)
  return record


def table(record: dict) -> str:
  """A markdown table: one row per step, copy exact match (p_code) per family."""
  steps = sorted(record, key=int)
  if not steps:
    return "(no checkpoint probed)"
  fams = list(record[steps[0]])
  lines = ["| step | " + " | ".join(f"{f} copy / digits / cell / guess" for f in fams)
           + " | printed L=2..6 copied (" + ", ".join(fams) + ") |",
           "|---:|" + "---|" * (len(fams) + 1)]
  for s in steps:
    cells = []
    for f in fams:
      r = record[s][f]
      g = f"{r['guess']:.2f}" if "guess" in r else "-"
      cells.append(f"{r['copy']:.2f} / {r['copy_digits']:.2f} / {r['cell']:.2f} / {g}")
    printed = "; ".join(" ".join(f"{record[s][f][f'printed_{n}']:.2f}" for n in PRINTED_LENGTHS)
                        for f in fams)
    lines.append(f"| {s} | " + " | ".join(cells) + f" | {printed} |")
  return "\n".join(lines)


# --------------------------------------------------------------------------------- train


def triggered_code(problems: Sequence[dict], extra: dict[str, int]) -> list[dict]:
  """{family: n} -> code demos of the first n training problems of each family, their prompts
  asking for code (`toy.ask_for_code`): extra cells to learn from without teaching the policy to
  open one unasked."""
  out = []
  for fam, n in extra.items():
    own = [p for p in problems if p["family"] == fam][:n]
    if len(own) < n:
      raise ValueError(f"--triggered_code {fam}={n}: only {len(own)} training problems")
    out += [{"prompt": toy.ask_for_code(p["problem"]), "response": toy.code_response(p),
             "family": fam, "answer": p["answer"], "mode": "code", "triggered": True}
            for p in own]
  return out


def train(config, workdir: str, every: int, extra: dict[str, int] | None = None) -> float:
  """Trains the warm-up exactly as the autocode mode does (same demos, settings, SFT path)
  except that it keeps a checkpoint every `every` steps and adds `triggered_code(extra)` demos
  to the data (appended: the SFT data shuffles); returns the wall seconds."""
  from aci_jax.data.sft import write_jsonl
  from aci_jax.em import modes
  from aci_jax.train.modes import run_sft

  config = copy.deepcopy(config)
  with config.unlocked():
    config.checkpoint.max_to_keep = config.warmup.steps // every + 2  # keep every one
  tok, _ = modes._tokenizer(config, workdir)
  train_problems, _ = modes._problems(config)
  s = dataclasses.replace(_settings(config, workdir), checkpoint_every=every)
  if not os.path.exists(s.data):
    write_jsonl(s.data, modes._warmup_demos(config, train_problems)
                + triggered_code(train_problems, extra or {}))
  t0 = time.perf_counter()
  run_sft(config, fileio.join(workdir, "warmup"), s, tokenizer=tok)
  return time.perf_counter() - t0


def main(argv):
  del argv
  from absl import flags

  f = flags.FLAGS
  config = f.config
  os.makedirs(f.workdir, exist_ok=True)
  if not f.probe_only:
    extra = {k: int(v) for k, v in (x.split("=") for x in f.triggered_code)}
    wall = train(config, f.workdir, f.every, extra)
    print(f"warm-up: {wall:.0f} s wall", flush=True)
  print(table(probe_checkpoints(config, f.workdir, n=f.n)))


def entry():
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", "configs/default.py", "the run's config file")
  flags.DEFINE_string("workdir", None, "run directory (W/warmup is the warm-up's)", required=True)
  flags.DEFINE_integer("every", 250, "keep a warm-up checkpoint every this many steps")
  flags.DEFINE_integer("n", 100, "held-out problems per family per probe")
  flags.DEFINE_list("triggered_code", [], "FAMILY=N,...: extra triggered code demos")
  flags.DEFINE_bool("probe_only", False, "probe the existing checkpoints; train nothing")
  app.run(main)


if __name__ == "__main__":
  sys.exit(entry())
