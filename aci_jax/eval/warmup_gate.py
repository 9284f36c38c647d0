"""The toy warm-up's decay gate: has the policy learned the demonstrations' skills yet?

`config.warmup.gate` lists probes as "family:kind" entries; `build_gate` turns them into the
`DecayGate` of `aci_jax.train.modes.run_sft` (`warmup.gate_mode` "hold": the schedule holds the
peak learning rate until the probes pass, then decays; "extend": the cosine as without a gate,
then training goes on at its final learning rate until they pass). Per entry, on `warmup.gate_n` problems of the family held out from the
run's training problems (the training split less every problem the run trains on: the gate
decides the schedule, so it must not read the evaluation set), each scored from one forward
pass, no sampling:

- `code`: the code demo after the forced code prefix (`toy.code_response`, encoded as the warm-up
  encodes a forced demo: the un-asked prompt, the prefix as context): greedy decoding given the
  true preceding tokens reproduces every token the model writes, i.e. the cell and, after the
  printed output, the boxed copy of it and the end of turn. What the E-step's forced rollouts
  need: writing the right cell, and copying its output into the answer.
- `reason`: the reasoning demo (`toy.cot_response`) after the un-asked prompt, every token.
- `copy`: the code demo as for `code`, scored on the boxed answer only (its characters and the
  closing brace), on problems whose printed output holds some digit twice. The box copy alone,
  where it can fail by value: a copy that looks up "the digit after the one just written"
  instead of going by position miscopies exactly those outputs (`485449` boxed `485499`;
  seeds 2 and 12, docs/em_log.md "Seed 12, held out"), which the `code` probe averages with the
  outputs it cannot miscopy and with the cell. A diagnostic so far: retrying a warm-up on it
  did not give a better policy (docs/em_log.md, "The copy probe").

A problem passes when every scored token is the argmax (exact match); an entry passes when at
least `warmup.gate_min` of its problems do; the gate passes when every entry does. Only families
whose reasoning demo derives the answer are worth a `reason` entry (a family whose demo states a
guessed product, such as `mul`, can never pass one), and only families whose cell is right by
design a `code` entry that expects it right; the configs name them.

The probes of any run's warm-up checkpoints (a gated run or not; e.g. to choose the entries):

    python -m aci_jax.eval.warmup_gate RUN [--steps 1875,2500] [--gate mul:code,add:reason]
        [--n 64]

RUN is a toy run's workdir (RUN/config.json, RUN/warmup/checkpoints); `--gate` defaults to
the run's `warmup.gate`. Prints one markdown row per checkpoint step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np

from aci_jax.configuration import ConfigError, seed_for
from aci_jax.data import toy
from aci_jax.data.sft import encode_demonstration
from aci_jax.eval.teacher_forcing import greedy_next_fn, scored_exact
from aci_jax.model import ModelConfig
from aci_jax.train.modes import DecayGate
from aci_jax import tool_format

KINDS = ("code", "reason", "copy")


def parse_entries(entries: Sequence[str], families: Sequence[str]) -> list[tuple[str, str]]:
  """[(family, kind)] of "family:kind" entries; a malformed, unknown or repeated one is a
  ConfigError."""
  out = []
  for e in entries:
    fam, sep, kind = str(e).partition(":")
    if not sep or kind not in KINDS:
      raise ConfigError(f"config.warmup.gate entry {e!r} must be 'family:kind', kind one of "
                        f"{KINDS}")
    if fam not in families:
      raise ConfigError(f"config.warmup.gate entry {e!r}: {fam!r} is not one of this run's "
                        f"families {tuple(families)} (name only those, or turn the gate off: "
                        "--config.warmup.gate=())")
    if (fam, kind) in out:
      raise ConfigError(f"config.warmup.gate entry {e!r} is repeated")
    out.append((fam, kind))
  return out


def heldout_problems(family: str, n: int, exclude: set[str], seed: int,
                     keep=lambda p: True, what: str = "") -> list[dict]:
  """`n` training-split problems of `family` none of whose texts is in `exclude`, those for
  which `keep(problem)` holds (`what` names them in the error)."""
  out = []
  for want in (2 * n, 4 * n, 16 * n, 64 * n):
    try:
      cands = toy.family_problems(family, want, split="train", seed=seed)
    except ValueError:  # the family holds fewer problems than that
      break
    out = [p for p in cands if p["problem"] not in exclude and keep(p)][:n]
    if len(out) == n:
      return out
  raise ConfigError(f"config.warmup.gate: too few training problems of {family!r}{what} outside "
                    f"the run's own for gate_n = {n}")


def repeats_a_digit(text: str) -> bool:
  """Whether some digit occurs twice in `text`."""
  digits = [c for c in text if c.isdigit()]
  return len(set(digits)) < len(digits)


def probe_problems(family: str, kind: str, n: int, exclude: set[str], seed: int) -> list[dict]:
  """The held-out problems of one probe (a `copy` probe's all print a repeated digit)."""
  if kind == "copy":
    return heldout_problems(family, n, exclude, seed,
                            keep=lambda p: repeats_a_digit(toy.printed_value(p)),
                            what=" printing a repeated digit")
  return heldout_problems(family, n, exclude, seed)


def gate_demos(family: str, kind: str, problems: Sequence[dict]) -> list[dict]:
  """The probe's demonstration records (as the warm-up's SFT data holds them)."""
  prefix = tool_format.get().code_prefix
  if kind in ("code", "copy"):
    return [{"prompt": p["problem"], "response": toy.code_response(p), "forced_prefix": prefix}
            for p in problems]
  return [{"prompt": p["problem"], "response": toy.cot_response(p)} for p in problems]


def encode(tokenizer, demos: Sequence[dict], system: str | None):
  """[(tokens, scored)] of `demos` as the warm-up encodes them: token ids, and per position i
  whether it is scored, i.e. token i + 1 is one the model writes (its loss mask)."""
  out = []
  for d in demos:
    e = encode_demonstration(tokenizer, d["prompt"], d["response"], max_len=1 << 30,
                             system=system, forced_prefix=d.get("forced_prefix", ""))
    out.append((np.asarray(e.tokens, np.int32), np.append(e.loss_mask[1:] > 0, False)))
  return out


def box_only(tokenizer, row, boxed_text: str):
  """`row` (tokens, scored) of a code demo scored only where the next token is part of the
  last `boxed_text` (e.g. `\\boxed{485449}`) past its opening `\\boxed{`: the copied
  characters and the closing brace. Token spans come from decoding growing prefixes, so a
  tokenizer that merges characters scores each token that overlaps the copy."""
  tokens, scored = row
  ends = np.array([len(tokenizer.decode([int(t) for t in tokens[:k]]))
                   for k in range(1, len(tokens) + 1)])
  text = tokenizer.decode([int(t) for t in tokens])
  start = text.rfind(boxed_text)
  if start < 0:
    raise ValueError(f"{boxed_text!r} is not in the encoded demo")
  lo, hi = start + len("\\boxed{"), start + len(boxed_text)
  begins = np.concatenate([[0], ends[:-1]])
  in_copy = (ends > lo) & (begins < hi)  # token t overlaps the copied characters
  return tokens, scored & np.append(in_copy[1:], False)


def pad(rows, width: int, batch: int):
  """(tokens, valid, scored) arrays [N', W] of `rows`, right-padded to `width` and to a
  multiple of `batch` rows (padding rows: nothing valid, nothing scored)."""
  n = -(-len(rows) // batch) * batch
  tokens = np.zeros((n, width), np.int32)
  valid = np.zeros((n, width), bool)
  scored = np.zeros((n, width), bool)
  for r, (t, sc) in enumerate(rows):
    tokens[r, :len(t)], valid[r, :len(t)], scored[r, :len(t)] = t, True, sc
  return tokens, valid, scored


def build_gate(config, tokenizer, model_cfg: ModelConfig, train: Sequence[dict]
               ) -> DecayGate | None:
  """The DecayGate of `config.warmup` (None when `warmup.gate` is empty)."""
  w = config.warmup
  entries = tuple(w.get("gate", ()))
  if not entries:
    return None
  if jax.process_count() > 1:
    # Its probe reads the (possibly host-sharded) parameters into host arrays on one process.
    raise ConfigError("config.warmup.gate runs on a single host for now; unset it for a "
                      f"{jax.process_count()}-process run")
  # The values were checked with the rest of the config (em.modes.validate).
  n, bar = int(w.gate_n), float(w.gate_min)
  parsed = parse_entries(entries, tuple(config.task.families))
  exclude = {p["problem"] for p in train}
  system = config.data.get("system") or None
  rows = {}
  for fam, kind in parsed:
    problems = probe_problems(fam, kind, n, exclude, seed=seed_for(config, "problem") + 104729)
    demos = gate_demos(fam, kind, problems)
    if config.task.get("instruction"):
      from aci_jax.eval.harness import user_message
      demos = [{**d, "prompt": user_message(d["prompt"], config.task.instruction)} for d in demos]
    rows[f"{fam}:{kind}"] = encode(tokenizer, demos, system)
    if kind == "copy":
      rows[f"{fam}:{kind}"] = [box_only(tokenizer, r, toy.boxed(toy.printed_value(p)))
                               for r, p in zip(rows[f"{fam}:{kind}"], problems)]
  # One width and batch for every entry: the probe compiles once.
  width = -(-max(len(t) for r in rows.values() for t, _ in r) // 16) * 16
  batch = min(n, 64)
  arrays = {k: pad(r, width, batch) for k, r in rows.items()}
  greedy = greedy_next_fn(model_cfg)

  def check(params):
    rates = {}
    for k, (tokens, valid, scored) in arrays.items():
      hits = np.concatenate([
          scored_exact(greedy(params, tokens[i:i + batch], valid[i:i + batch]),
                       tokens[i:i + batch], scored[i:i + batch])
          for i in range(0, len(tokens), batch)])
      rates[k] = float(np.mean(hits[:n]))
    return all(v >= bar for v in rates.values()), rates

  return DecayGate(check=check, every=int(w.gate_every), tail=int(w.gate_tail),
                   mode=str(w.gate_mode))


def read_run_config(run: str, tool: str):
  """RUN/config.json of a toy run, with the warm-up keys a later version added at their plain
  defaults (a run from before they existed). Unreadable: SystemExit naming `tool`."""
  import ml_collections

  from aci_jax.configuration import PLAIN_DEFAULTS
  path = os.path.join(run, "config.json")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise SystemExit(f"{tool}: cannot read {path}: {e}".splitlines()[0]) from None
  with config.unlocked():
    for k, v in PLAIN_DEFAULTS["warmup"].items():
      if k not in config.warmup:
        config.warmup[k] = v
  return config


def probe_setup(config, run: str, gate: str, n: int, tool: str):
  """(training problems, tokenizer) for probing `run`'s warm-up; `gate` (comma-separated
  family:kind entries) and `n` (0: the run's) override its probes in `config`. Bad input:
  SystemExit naming `tool`."""
  from aci_jax.em import modes
  from aci_jax.tokenizer import load_tokenizer

  with config.unlocked():
    if gate:
      config.warmup.gate = tuple(gate.split(","))
    if n:
      config.warmup.gate_n = n
  if not tuple(config.warmup.get("gate", ())):
    raise SystemExit(f"{tool}: the run has no warmup.gate; name the probes with --gate")
  try:
    modes.validate(config)
    train, _ = modes._problems(config)  # pylint: disable=protected-access
  except ConfigError as e:
    raise SystemExit(f"{tool}: {e}") from None
  return train, load_tokenizer(os.path.join(run, "tokenizer"))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="the warm-up gate's probes on a run's checkpoints")
  p.add_argument("run", help="a toy run's workdir (with config.json and warmup/checkpoints)")
  p.add_argument("--steps", default="", help="comma-separated checkpoint steps (default: all)")
  p.add_argument("--gate", default="", help="comma-separated family:kind entries (default: "
                 "the run's warmup.gate)")
  p.add_argument("--n", type=int, default=0, help="held-out problems per entry (default: the "
                 "run's warmup.gate_n)")
  a = p.parse_args(argv)
  from aci_jax.eval.warmup_probe import committed_steps, restore_params

  config = read_run_config(a.run, "warmup_gate")
  have = committed_steps(os.path.join(a.run, "warmup", "checkpoints"))
  steps = [int(x) for x in a.steps.split(",") if x] or have
  missing = sorted(set(steps) - set(have))
  if not steps or missing:
    raise SystemExit(f"warmup_gate: no warm-up checkpoint {missing or ''} under {a.run} "
                     f"(it has {have})")
  train, tok = probe_setup(config, a.run, a.gate, a.n, "warmup_gate")
  gate = None
  for step in steps:
    cfg, params = restore_params(config, a.run, step)
    gate = gate or build_gate(config, tok, cfg, train)
    passed, rates = gate.check(params)
    if step == steps[0]:
      print("| step | " + " | ".join(rates) + " | gate |\n|---|" + "---|" * (len(rates) + 1))
    print(f"| {step} | " + " | ".join(f"{v:.2f}" for v in rates.values())
          + f" | {'passes' if passed else 'not yet'} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
