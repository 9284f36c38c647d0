"""Warm-up demonstrations from GSM8K worked solutions: the code cell prints what it shows."""

import contextlib
import io
import json

from aci_jax.data import format_demos as fd
from aci_jax.data.sft import split_response

REC = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                   "many clips in May. How many clips did Natalia sell altogether?",
       "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                 "<<48+24=72>>72 clips altogether in April and May.\n#### 72"}


def test_both_modes_and_the_output_block_is_what_python_prints():
  d = fd.demos_from_record(REC)
  assert d["answer"] == "72"
  assert d["cot"].endswith("The answer is \\boxed{72}.") and "<<" not in d["cot"]
  code = d["code"].split("```python\n", 1)[1].split("```", 1)[0]
  shown = d["code"].split("```output\n", 1)[1].split("```", 1)[0]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(code, {})  # noqa: S102 - our own two print() lines
  assert buf.getvalue() == shown
  # The SFT reader splits it into model text and environment text at the output fence.
  segs = split_response(d["code"])
  assert [w for _, w in segs] == [True, False, True]


def test_unusable_records_are_skipped():
  bad = dict(REC, answer="She sold <<import os=1>>1.\n#### 1")
  wrong = dict(REC, answer="She sold <<2+2=5>>5.\n#### 5")  # annotation disagrees with Python
  assert fd.demos_from_record(bad) is None and fd.demos_from_record(wrong) is None
  assert fd.demos_from_record({"question": "q", "answer": "no marker"}) is None


def test_cli(tmp_path, capsys):
  src = tmp_path / "g.jsonl"
  src.write_text("".join(json.dumps(REC) + "\n" for _ in range(4)))
  out = tmp_path / "demos.jsonl"
  assert fd.main([str(src), "--out", str(out), "--code-fraction", "0.5"]) == 0
  demos = [json.loads(x) for x in out.read_text().splitlines()]
  assert len(demos) == 4 and sum(d["mode"] == "code" for d in demos) == 2
  assert fd.main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
  assert capsys.readouterr().err.startswith("error:")
