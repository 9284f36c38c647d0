"""Why are a toy policy's coded answers wrong? Copies, counted by kind.

    python -m aci_jax.eval.copy_errors RUN [--point warmup|iteration_N] [--pass greedy,forced_code]

On the toy a coded answer needs two copies the policy must make itself: the problem's operands
into the cell, and the cell's printed output into `\\boxed{}`. Issue 16's weak warm-ups fail at
those copies, not at choosing or writing the cell (docs/em_log.md, "Seed 2's miscopies"). For every
evaluated response that ran a cell (RUN/eval/POINT/toy.trajectories.jsonl; POINT defaults to
the last iteration evaluated), per pass and family:

- right: graded right;
- box miscopied: the last cell printed the gold answer and the box holds something else;
- operands miscopied: the integers of the cell's code are not those of the problem (as
  multisets);
- other: any other wrong coded answer (a cell wrong by design, a tool error, no box).

Each copy error is also split by whether its source has a repeated digit (the printed output
`485449` for the box; any of the problem's operands, `551`, for the cell): the case a copy that
looks up "the digit after the one just written" gets wrong and a copy by position does not. As
rates: of the responses whose source has (has not) a repeated digit, how many were miscopied. Prints one markdown table; exits 2 with one line on
bad input.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from typing import Iterable

from aci_jax.eval.learning_bars import last_iteration

_INT = re.compile(r"\d+")
_BOX = re.compile(r"\\boxed\{([^{}]*)\}")


def has_repeat(digits: str) -> bool:
  """Does the number `digits` hold some digit twice?"""
  return len(set(digits)) < len(digits)


def classify(problem: str, response: str, cells: list[dict], gold: str, right: bool
             ) -> tuple[str, bool | None]:
  """(kind, source has a repeated digit) of one coded response; kind is `right`, `box`,
  `operands` or `other`. The source is the printed output for `box` and the problem's operands
  (any of them) for `operands`; the flag is None for `right`/`other`."""
  if right:
    return "right", None
  out = str(cells[-1].get("output") or "").strip()
  boxes = _BOX.findall(response)
  if out == str(gold).strip() and boxes and boxes[-1].strip() != out:
    return "box", has_repeat(out)
  want = collections.Counter(_INT.findall(problem))
  got = collections.Counter(n for c in cells for n in _INT.findall(str(c.get("code", ""))))
  if want != got:
    return "operands", any(has_repeat(n) for n in want)
  return "other", None


def source_repeats(problem: str, cells: list[dict], gold: str) -> tuple[bool, bool]:
  """(the box's source has a repeated digit, some operand has one): the base rates' split."""
  out = str(cells[-1].get("output") or "").strip() or str(gold)
  return has_repeat(out), any(has_repeat(n) for n in _INT.findall(problem))


def tally(rows: Iterable[dict], decode) -> dict[tuple[str, str], collections.Counter]:
  """{(pass, family): counts} over the trajectories `rows` that ran a cell; `decode(ids)` gives
  a prompt's problem text."""
  out: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
  for r in rows:
    if not r.get("cells"):
      continue
    meta = r.get("meta") or {}
    problem = decode(r["prompt_ids"])
    right = float(r.get("reward", 0.0)) >= 1.0
    kind, rep = classify(problem, r.get("text", ""), r["cells"], meta.get("gold", ""), right)
    box_rep, op_rep = source_repeats(problem, r["cells"], meta.get("gold", ""))
    c = out[(str(meta.get("pass", r.get("mode", "?"))), str(meta.get("family", "?")))]
    c["n"] += 1
    c[kind] += 1
    if kind in ("box", "operands"):
      c[f"{kind}_rep" if rep else f"{kind}_norep"] += 1
    c["box_src_rep" if box_rep else "box_src_norep"] += 1
    c["op_src_rep" if op_rep else "op_src_norep"] += 1
  return out


def table(counts: dict[tuple[str, str], collections.Counter]) -> str:
  lines = ["| pass | family | coded | right | box miscopied: output with a repeated digit / "
           "without | operands miscopied: an operand with a repeated digit / without | other |",
           "|---|---|---:|---:|---|---|---:|"]
  for (ps, fam), c in sorted(counts.items()):
    lines.append(
        f"| {ps} | {fam} | {c['n']} | {c['right']} | {c['box_rep']} of {c['box_src_rep']} / "
        f"{c['box_norep']} of {c['box_src_norep']} | {c['operands_rep']} of {c['op_src_rep']} / "
        f"{c['operands_norep']} of {c['op_src_norep']} | {c['other']} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="a toy run's coded answers: copy errors by kind")
  p.add_argument("run", help="a toy run's workdir (RUN/eval/*/toy.trajectories.jsonl)")
  p.add_argument("--point", default="", help="warmup or iteration_N (default: the last "
                 "iteration evaluated)")
  p.add_argument("--pass", dest="passes", default="", help="comma-separated passes to count "
                 "(e.g. greedy,forced_code; default: all)")
  a = p.parse_args(argv)
  try:
    point = a.point or f"iteration_{last_iteration(a.run)}"
  except (OSError, SystemExit) as e:
    print(f"copy_errors: {a.run}: {e}".splitlines()[0], file=sys.stderr)
    return 2
  try:
    path = os.path.join(a.run, "eval", point, "toy.trajectories.jsonl")
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError) as e:
    print(f"copy_errors: cannot read {a.run}'s evaluation: {e}".splitlines()[0],
          file=sys.stderr)
    return 2
  from aci_jax.tokenizer import load_tokenizer

  try:
    tok = load_tokenizer(os.path.join(a.run, "tokenizer"))
  except (OSError, ValueError) as e:  # ConfigError is a ValueError
    print(f"copy_errors: cannot load {a.run}/tokenizer: {e}".splitlines()[0], file=sys.stderr)
    return 2
  passes = {x for x in a.passes.split(",") if x}
  if passes:
    rows = [r for r in rows if (r.get("meta") or {}).get("pass") in passes]
  try:
    counts = tally(rows, lambda ids: tok.decode(ids, skip_special_tokens=True))
  except (KeyError, TypeError, AttributeError) as e:
    print(f"copy_errors: {path}: a trajectory without {e} (not an evaluation's trajectories?)",
          file=sys.stderr)
    return 2
  if not counts:
    print(f"copy_errors: no coded response in {path}", file=sys.stderr)
    return 2
  print(f"{a.run} ({point})\n")
  print(table(counts))
  return 0


if __name__ == "__main__":
  sys.exit(main())
