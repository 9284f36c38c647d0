"""aci_jax.eval.copy_errors: which copy a wrong coded toy answer got wrong (issue 16)."""

import json

import pytest

from aci_jax.eval import copy_errors
from aci_jax.tokenizer import load_tokenizer


def cell(code, output):
  return [{"code": code, "output": output, "status": "ok"}]


@pytest.mark.parametrize("problem,response,cells,gold,right,want", [
    # the printed product is right, its copy into the box is not: a repeated digit (4) misread
    ("What is 587 * 827?", "```output\n485449\n```\n\\boxed{485499}",
     cell("print(587 * 827)\n", "485449"), "485449", False, ("box", True)),
    # the same kind of error on an output with six different digits
    ("What is 369 * 458?", "```output\n168902\n```\n\\boxed{168920}",
     cell("print(369 * 458)\n", "168902"), "168902", False, ("box", False)),
    # 551 written as 515: an operand miscopied into the cell, the cell then prints a wrong value
    ("What is 93^551 mod 792?", "\\boxed{45}", cell("print(pow(93, 515, 792))\n", "45"),
     "621", False, ("operands", True)),
    ("What is 5^301 mod 721?", "\\boxed{5}", cell("print(pow(5, 301, 724))\n", "5"),
     "362", False, ("operands", False)),
    # operands right, the cell itself wrong (a bug by design): no copy to blame
    ("Which has more digits, 87 or 143?", "\\boxed{87}", cell("print(max('87', '143'))\n", "87"),
     "143", False, ("other", None)),
    # a right answer is right whatever its text
    ("What is 12 * 34?", "\\boxed{408}", cell("print(12 * 34)\n", "408"), "408", True,
     ("right", None)),
])
def test_classify(problem, response, cells, gold, right, want):
  assert copy_errors.classify(problem, response, cells, gold, right) == want


def test_has_repeat():
  assert copy_errors.has_repeat("485449") and copy_errors.has_repeat("551")
  assert not copy_errors.has_repeat("168902") and not copy_errors.has_repeat("7")


def _row(tok, problem, text, cells, gold, reward, family, ps="forced_code"):
  return {"prompt_ids": tok.encode(problem), "text": text, "cells": cells, "reward": reward,
          "mode": "code", "meta": {"gold": gold, "family": family, "pass": ps}}


def test_the_command_counts_each_kind_per_pass_and_family(tmp_path, capsys):
  tok = load_tokenizer("toy", toy_dir=str(tmp_path / "tokenizer"))
  rows = [
      _row(tok, "What is 587 * 827?", "\\boxed{485499}", cell("print(587 * 827)", "485449"),
           "485449", 0.0, "mul"),
      _row(tok, "What is 12 * 34?", "\\boxed{408}", cell("print(12 * 34)", "408"), "408", 1.0,
           "mul"),
      _row(tok, "What is 93^551 mod 792?", "\\boxed{45}", cell("print(pow(93, 515, 792))", "45"),
           "621", 0.0, "powmod"),
      # no cell: not a coded answer, not counted
      {"prompt_ids": tok.encode("What is 2 + 2?"), "text": "\\boxed{4}", "cells": [],
       "reward": 1.0, "meta": {"gold": "4", "family": "add", "pass": "greedy"}},
  ]
  (tmp_path / "eval" / "warmup").mkdir(parents=True)
  with open(tmp_path / "eval" / "warmup" / "toy.trajectories.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert copy_errors.main([str(tmp_path), "--point", "warmup"]) == 0
  out = capsys.readouterr().out
  # mul: 2 coded, 1 right, the box miscopy on the one output with a repeated digit (485449;
  # 408 has none; no operand of 587 * 827 or 12 * 34 has one); powmod: the operand miscopy,
  # whose problem has a repeated-digit operand (551)
  assert "| forced_code | mul | 2 | 1 | 1 of 1 / 0 of 1 | 0 of 0 / 0 of 2 | 0 |" in out
  assert "| forced_code | powmod | 1 | 0 | 0 of 0 / 0 of 1 | 1 of 1 / 0 of 0 | 0 |" in out
  assert "| add |" not in out
  assert copy_errors.main([str(tmp_path), "--point", "warmup", "--pass", "greedy"]) == 2
  assert "no coded response" in capsys.readouterr().err


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
  assert copy_errors.main([str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("copy_errors:") and err.count("\n") == 1
  (tmp_path / "eval" / "iteration_1").mkdir(parents=True)
  (tmp_path / "eval" / "iteration_1" / "toy.trajectories.jsonl").write_text("{not json\n")
  assert copy_errors.main([str(tmp_path), "--point", "iteration_1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("copy_errors: cannot read") and err.count("\n") == 1
