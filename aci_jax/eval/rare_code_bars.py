"""Is a warm-up policy in the rare-code regime? It *can* code but seldom *chooses* to.

    python -m aci_jax.eval.rare_code_bars RUN [RUN ...] [--temperature T]

RUN is a toy run's workdir after its warm-up and the warm-up evaluation (e.g.
`python -m aci_jax.main --config configs/default.py:rare_code --workdir RUN
--config.em.iterations=0`). On the run's own held-out problems, per family and over all:

- native P(code): the exact probability, at the E-step's sampling temperature
  (`rollout.temperature` of RUN/config.json unless --temperature), that the response to an
  un-asked prompt opens a cell (`decision_probe.prefix_logprob`: one forward pass per prompt);
  mean, 90th percentile, max, and the fraction of queries above 5%;
- asked P(code): the same with the prompt asking for code (`toy.ask_for_code`), the control that
  the asked demos taught cells;
- forced-code accuracy: the evaluation's greedy forced code-mode pass (real sandbox,
  RUN/eval/warmup/toy.summary.json);
- cell exact match, asked / forced (a diagnostic, not a bar): after the code prefix, does greedy
  decoding (teacher-forced, one forward pass) reproduce the problem's cell up to its stop marker,
  with the asking prompt and with the un-asked one (the context of the E-step's forced rollouts
  and of the forced pass above)? Where can-code fails it separates a skill tied to the trigger
  (asked right, forced wrong) from a missing one (docs/em_log.md, "Forced-prefix demos").

The bars (issue 16 item 2, docs/em.md "The rare-code regime"), checked over all the held-out
problems: native P(code) mean <= 2% and 90th percentile <= 5%; forced-code accuracy >= 0.8
(over the families whose cells are right: not over one whose code is error-prone by design,
`toy.code_error_prone`); asked P(code) mean >= 0.9. Prints a markdown table per run and the
bars it misses; exits 1 if any run misses one, or with one line on bad input (a missing file,
a run that is not a toy run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from aci_jax.data import toy
from aci_jax.eval.learning_bars import load_json

NATIVE_MEAN, NATIVE_P90, FORCED, ASKED = 0.02, 0.05, 0.8, 0.9


@dataclasses.dataclass(frozen=True)
class CodeRates:
  """P(code) per held-out query, un-asked and asked, with each query's family."""
  families: tuple[str, ...]
  native: np.ndarray  # [N] float64
  asked: np.ndarray  # [N] float64
  # teacher-forced cell exact match after the code prefix, asked / un-asked prompt ([N] bool)
  cell_asked: np.ndarray | None = None
  cell_forced: np.ndarray | None = None


def _load_json(path: str) -> dict:
  return load_json(path, "rare_code_bars")


def code_rates(run: str, *, temperature: float | None = None) -> CodeRates:
  """P(code) of RUN's warm-up policy (RUN/warmup/hf) on RUN's held-out toy problems."""
  import ml_collections

  from aci_jax import tool_format
  from aci_jax.data import toy
  from aci_jax.em import modes
  from aci_jax.eval.decision_probe import prefix_logprob
  from aci_jax.eval.teacher_forcing import teacher_forced_argmax
  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params
  from aci_jax.tokenizer import load_tokenizer

  config = ml_collections.ConfigDict(_load_json(os.path.join(run, "config.json")))
  if config.task.name != "toy":
    raise SystemExit(f"rare_code_bars: {run} is a {config.task.name!r} run; the bars are "
                     "defined on the toy task")
  hf = os.path.join(run, "warmup", "hf")
  cfg = ModelConfig.from_pretrained(hf, dtype="float32")
  params = load_params(hf, cfg)
  tok = load_tokenizer(os.path.join(run, "tokenizer"))
  prompt = modes.prompt_builder(config, tok)  # the framing the E-step and evaluation use
  _, evals = modes._problems(config)
  problems = evals["toy"]
  fmt = tool_format.get(config.rollout.tool_format)
  prefix = tok.encode(fmt.code_prefix)
  t = float(config.rollout.temperature if temperature is None else temperature)

  def rates(texts):
    return np.exp(prefix_logprob(cfg, params, [prompt(x) for x in texts], prefix,
                                 temperature=t))

  cells = [tok.encode(toy.cell_text(p, fmt)) for p in problems]

  def cell_match(texts):
    ctx = [list(prompt(x)) + list(prefix) for x in texts]
    pred = teacher_forced_argmax(cfg, params, ctx, cells)
    return np.asarray([np.array_equal(a, np.asarray(b)) for a, b in zip(pred, cells)])

  unasked = [p["problem"] for p in problems]
  asked = [toy.ask_for_code(p["problem"]) for p in problems]
  return CodeRates(families=tuple(p["family"] for p in problems),
                   native=rates(unasked), asked=rates(asked),
                   cell_asked=cell_match(asked), cell_forced=cell_match(unasked))


def _row(name: str, rates: CodeRates, m: np.ndarray, forced) -> str:
  native, asked = rates.native[m], rates.asked[m]
  f = "" if forced is None else f"{forced:.2f}"
  cells = ("" if rates.cell_asked is None else
           f"{rates.cell_asked[m].mean():.2f} / {rates.cell_forced[m].mean():.2f}")
  return (f"| {name} | {len(native)} | {100 * native.mean():.2f}% | "
          f"{100 * np.quantile(native, 0.9):.2f}% | {100 * native.max():.1f}% | "
          f"{(native > NATIVE_P90).mean():.2f} | {asked.mean():.3f} | {f} | {cells} |")


def judge(run: str, rates: CodeRates) -> tuple[list[str], list[str]]:
  """(markdown table lines, bars missed) for one run."""
  summary = _load_json(os.path.join(run, "eval", "warmup", "toy.summary.json"))
  if not summary.get("selection"):
    raise SystemExit(f"rare_code_bars: {run}'s warm-up evaluation has no forced passes "
                     "(eval.selection was off)")
  fams = np.asarray(rates.families)
  lines = [f"{run}:", "",
           "| family | n | native P(code) mean | p90 | max | share > 5% | asked P(code) | "
           "forced-code accuracy | cell exact match, asked / forced |",
           "|---|---|---|---|---|---|---|---|---|"]
  by_family = summary.get("by_family", {})
  for fam in dict.fromkeys(rates.families):
    m = fams == fam
    sel = (by_family.get(fam) or {}).get("selection") or {}
    lines.append(_row(fam, rates, m, sel.get("forced_code_accuracy")))
  forced = summary["selection"]["forced_code_accuracy"]
  lines.append(_row("all", rates, np.ones(len(fams), bool), forced))
  prone = [f for f in dict.fromkeys(rates.families) if toy.code_error_prone(f)]
  if prone:
    # The can-code bar is over the families whose cells are right: an error-prone family's
    # forced accuracy (~0.5 on `compare_len` by design) measures its habit, not the skill.
    keep = [f for f in dict.fromkeys(rates.families) if f not in prone]
    accs = [((by_family.get(f) or {}).get("selection") or {}).get("forced_code_accuracy")
            for f in keep]
    weighted = sum(a * (fams == f).sum() for a, f in zip(accs, keep)) if None not in accs else None
    forced = None if weighted is None else float(weighted / np.isin(fams, keep).sum())
    lines.append(_row(f"all but {', '.join(prone)}", rates, np.isin(fams, keep), forced))
  misses = []
  if rates.native.mean() > NATIVE_MEAN:
    misses.append(f"native P(code) mean {rates.native.mean():.4f} > {NATIVE_MEAN}")
  if np.quantile(rates.native, 0.9) > NATIVE_P90:
    misses.append(f"native P(code) p90 {np.quantile(rates.native, 0.9):.4f} > {NATIVE_P90}")
  if forced is None or forced < FORCED:
    what = f" (all but {', '.join(prone)})" if prone else ""
    misses.append(f"forced-code accuracy{what} {forced} < {FORCED}")
  if rates.asked.mean() < ASKED:
    misses.append(f"asked P(code) mean {rates.asked.mean():.3f} < {ASKED}")
  return lines, misses


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("runs", nargs="+", help="toy run workdirs after the warm-up evaluation")
  p.add_argument("--temperature", type=float, default=None,
                 help="sampling temperature of P(code) (default: the run's rollout.temperature)")
  a = p.parse_args(argv)
  failed = False
  for run in a.runs:
    lines, misses = judge(run, code_rates(run, temperature=a.temperature))
    print("\n".join(lines))
    print("bars: " + ("all met" if not misses else "MISSED: " + "; ".join(misses)) + "\n")
    failed |= bool(misses)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
