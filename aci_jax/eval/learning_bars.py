"""Did an EM run on the toy learn *when* to code? The embedded default's bars at one iteration.

    python -m aci_jax.eval.learning_bars RUN [RUN ...] [--iteration N]

Reads RUN/eval/warmup/toy.summary.json (the warm-up policy) and RUN/eval/iteration_N/
toy.summary.json (N: the last iteration evaluated, unless given) and checks the bars of issue 16's
item 1 (docs/em.md, "Item 1"):

- every code family (`toy.Family.needs_code`): greedy accuracy >= 0.8 at code rate >= 0.9;
- every reasoning family: accuracy >= 0.95 x its warm-up accuracy, at code rate 0;
- overall accuracy >= the warm-up's + 0.30;
- selection accuracy (the forced-rollout choice of the selection evaluation) >= 0.9.

Prints one markdown row per run (with the warm-up's forced-code accuracy per family, the
copy skill the EM part builds on) and the bars each run misses; exits 1 if any run misses one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

CODE_ACCURACY, CODE_RATE = 0.8, 0.9
REASONING_KEEP = 0.95
GAIN = 0.30
SELECTION = 0.9
# Accuracies are counts over n problems (k / n); a bar met exactly must not fail on the last bit
# of a float product such as 0.95 * 0.96.
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Verdict:
  run: str
  iteration: int
  row: tuple[str, ...]  # markdown cells after the run name
  misses: tuple[str, ...]  # one phrase per bar not met

  @property
  def passed(self) -> bool:
    return not self.misses


def load_json(path: str, tool: str = "learning_bars") -> dict:
  """A run's JSON file; a missing one ends `tool` with one line."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise SystemExit(f"{tool}: {path} not found (is this a run's workdir with its "
                     f"evaluations?)") from None


def last_iteration(run: str) -> int:
  its = [int(m.group(1)) for name in os.listdir(os.path.join(run, "eval"))
         if (m := re.fullmatch(r"iteration_(\d+)", name))
         and os.path.exists(os.path.join(run, "eval", name, "toy.summary.json"))]
  if not its:
    raise SystemExit(f"learning_bars: {run}/eval has no evaluated iteration")
  return max(its)


def judge(warmup: dict, final: dict, *, run: str = "", iteration: int = 0) -> Verdict:
  """The bars for one run from its warm-up and iteration summaries (toy.summary.json dicts)."""
  from aci_jax.data import toy

  families = sorted(final["by_family"])
  try:
    code = set(toy.code_families(families))
  except ValueError as e:
    raise SystemExit(f"learning_bars: {e}") from None
  misses = []
  cells = [f"{warmup['accuracy']:.2f} -> {final['accuracy']:.2f}"]
  for fam in families:
    now, before = final["by_family"][fam], warmup["by_family"][fam]
    if fam in code:
      cells.append(f"{fam} {now['accuracy']:.2f} (code {now['code_rate']:.2f})")
      if now["accuracy"] < CODE_ACCURACY - _EPS:
        misses.append(f"{fam} accuracy {now['accuracy']:.2f} < {CODE_ACCURACY}")
      if now["code_rate"] < CODE_RATE - _EPS:
        misses.append(f"{fam} code rate {now['code_rate']:.2f} < {CODE_RATE}")
    else:
      cells.append(f"{fam} {before['accuracy']:.2f} -> {now['accuracy']:.2f}"
                   + (f", code {now['code_rate']:.2f}" if now["code_rate"] else ""))
      if now["accuracy"] < REASONING_KEEP * before["accuracy"] - _EPS:
        misses.append(f"{fam} accuracy {now['accuracy']:.2f} < {REASONING_KEEP} x warm-up "
                      f"{before['accuracy']:.2f}")
      if now["code_rate"] > 0:
        misses.append(f"{fam} codes on {now['code_rate']:.2f} of its problems")
  if final["accuracy"] < warmup["accuracy"] + GAIN - _EPS:
    misses.append(f"gain {final['accuracy'] - warmup['accuracy']:+.2f} < +{GAIN}")
  if final["selection_accuracy"] < SELECTION - _EPS:
    misses.append(f"selection accuracy {final['selection_accuracy']:.2f} < {SELECTION}")
  cells.append(f"sel. {final['selection_accuracy']:.2f}")
  cells.append("warm-up forced code " + " / ".join(
      f"{warmup['by_family'][f]['selection']['forced_code_accuracy']:.2f}" for f in families))
  return Verdict(run, iteration, tuple(cells), tuple(misses))


def judge_run(run: str, iteration: int | None = None) -> Verdict:
  it = last_iteration(run) if iteration is None else iteration
  warmup = load_json(os.path.join(run, "eval", "warmup", "toy.summary.json"))
  final = load_json(os.path.join(run, "eval", f"iteration_{it}", "toy.summary.json"))
  return judge(warmup, final, run=run, iteration=it)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="EM run workdirs")
  p.add_argument("--iteration", type=int, default=None,
                 help="the iteration to judge (default: the last one evaluated)")
  args = p.parse_args(argv)
  failed = 0
  for run in args.runs:
    v = judge_run(run, args.iteration)
    verdict = "**pass**" if v.passed else "fail: " + "; ".join(v.misses)
    print(f"| {run} | {v.iteration} | " + " | ".join(v.row) + f" | {verdict} |")
    failed += not v.passed
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
