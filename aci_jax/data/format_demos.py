"""Format warm-up demonstrations in both modes, built from GSM8K worked solutions.

    python -m aci_jax.data.format_demos gsm8k_train.jsonl --out demos.jsonl [--limit 64]
        [--code-fraction 0.5] [--seed 0] [--skip 0] [--max-chars 0]

A real instruction-tuned checkpoint does not write the rollout format by itself: measured on
SmolLM2-135M-Instruct, it never opened an output fence (it invents the printed result and goes
on), so no cell ever ran, and it never wrote \\boxed{} (0/96). The paper's stage 0 is a short
SFT on demonstrations of both modes; this builds such demonstrations from any GSM8K-style file
(`question`, and `answer` = a worked solution with calculator annotations `<<48/2=24>>` and a
final `#### 72` line), with no model and no hand-writing:

  reasoning  the solution's sentences (annotations removed), then "The answer is \\boxed{72}."
  code       one `print(...)` per annotated calculation in a ```python cell, the ```output block
             with the values the annotations record, then "The answer is \\boxed{72}."

Only problems whose every annotation is plain arithmetic are used (the code must be what the
sandbox would print: each expression is evaluated here in Python and must equal the annotated
value). Output lines are what `print` shows for the evaluated value. The records are the
{"prompt", "response", "answer", "mode"} lines `aci_jax.data.sft` reads.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys

from aci_jax import fileio, tool_format

_ANNOT = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_SAFE = re.compile(r"^[\d\s+\-*/().%]+$")


def _value(expr: str):
  """Python's value of a plain arithmetic expression (digits, + - * / % ( ) only), or None."""
  expr = expr.replace("x", "*").strip()
  if not _SAFE.match(expr):
    return None
  try:
    tree = ast.parse(expr, mode="eval")
  except SyntaxError:
    return None
  for node in ast.walk(tree):  # numbers and arithmetic operators only
    if not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add,
                             ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.USub, ast.UAdd,
                             ast.FloorDiv, ast.Pow)):
      return None
  try:
    return expr, eval(compile(tree, "<demo>", "eval"), {"__builtins__": {}})  # noqa: S307
  except (ZeroDivisionError, OverflowError):
    return None


def _close(a, b: str) -> bool:
  try:
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
  except ValueError:
    return False


def demos_from_record(rec: dict) -> dict | None:
  """{"cot": response, "code": response, "answer"} for one GSM8K record, or None if unusable."""
  question, solution = rec.get("question") or rec.get("problem"), rec.get("answer")
  if not isinstance(question, str) or not isinstance(solution, str) or "####" not in solution:
    return None
  body, final = solution.rsplit("####", 1)
  final = final.strip().replace(",", "")
  calcs = []
  for m in _ANNOT.finditer(body):
    got = _value(m.group(1))
    if got is None or not _close(got[1], m.group(2).strip()):
      return None
    calcs.append(got)
  if not calcs:
    return None
  prose = _ANNOT.sub("", body).strip()
  cot = f"{prose}\nThe answer is \\boxed{{{final}}}."
  code = "\n".join(f"print({e})" for e, _ in calcs)
  shown = "\n".join(str(v) for _, v in calcs)
  resp = ("Let me compute this with Python.\n" + tool_format.get().render_call(code, shown) +
          f"The answer is \\boxed{{{final}}}.")
  return {"cot": cot, "code": resp, "answer": final, "prompt": question}


def build(records, limit: int = 64, code_fraction: float = 0.5, seed: int = 0,
          max_chars: int = 0) -> list[dict]:
  """Up to `limit` demonstrations, `code_fraction` of them in code mode (chosen at random);
  with `max_chars`, only problems whose prompt + longer response fit in that many characters
  (short demonstrations make a CPU warm-up step cheaper; the format is the same)."""
  usable = [d for d in (demos_from_record(r) for r in records) if d is not None and (
      not max_chars or len(d["prompt"]) + max(len(d["cot"]), len(d["code"])) <= max_chars)]
  usable = usable[:limit]
  rng = random.Random(f"aci_jax.format_demos:{seed}")
  code = set(rng.sample(range(len(usable)), int(code_fraction * len(usable) + 0.5)))
  return [{"prompt": d["prompt"], "response": d["code" if i in code else "cot"],
           "answer": d["answer"], "mode": "code" if i in code else "cot"}
          for i, d in enumerate(usable)]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aci_jax.data.format_demos", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("source", help="GSM8K-style JSONL (question, answer with <<..>> and ####)")
  p.add_argument("--out", required=True)
  p.add_argument("--limit", type=int, default=64)
  p.add_argument("--skip", type=int, default=0, help="records to skip first (keep the "
                 "demonstrations disjoint from an evaluation slice of the same file)")
  p.add_argument("--code-fraction", type=float, default=0.5)
  p.add_argument("--max-chars", type=int, default=0,
                 help="only problems whose prompt + response fit in this many characters")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if not 0 <= args.code_fraction <= 1 or args.limit < 1:
    print("error: need 0 <= --code-fraction <= 1 and --limit >= 1", file=sys.stderr)
    return 2
  try:
    lines = [ln for ln in fileio.read_text(args.source).splitlines() if ln.strip()]
    records = []
    for n, ln in enumerate(lines[args.skip:], args.skip + 1):
      try:
        records.append(json.loads(ln))
      except json.JSONDecodeError as e:
        raise fileio.DataError(f"{args.source}:{n}: not JSON ({e.msg})") from None
  except (OSError, fileio.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  demos = build(records, args.limit, args.code_fraction, args.seed, args.max_chars)
  if not demos:
    print(f"error: {args.source}: no record with a worked solution (<<expr=value>> and ####)",
          file=sys.stderr)
    return 2
  fileio.write_text(args.out, "".join(json.dumps(d) + "\n" for d in demos))
  print(f"{len(demos)} demonstrations ({sum(d['mode'] == 'code' for d in demos)} code) -> "
        f"{args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
