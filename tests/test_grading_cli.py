"""``python -m aci_jax.grade PAIRS.jsonl``: one verdict line per input line; clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, stdin=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "aci_jax.grade", *args], capture_output=True, text=True,
                          timeout=120, env=env, input=stdin, cwd=ROOT)


def test_cli_grades_pairs(tmp_path):
    rows = [
        {"gold": r"\frac{1}{2}", "pred": "0.5"},
        {"gold": "50", "pred": "0.5"},
        {"gold": "3", "pred": r"so the answer is \boxed{3}.", "response": True},
        {"gold": "3", "pred": "no box at all", "response": True},
        {"gold": 27.0, "pred": "27"},
        {"gold": "#### 1,200", "pred": "1200"},
    ]
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    p = _run([str(src), "-o", str(out), "--workers", "2"])
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == [
        {"equal": True, "status": "ok", "pred_extracted": "0.5"},
        {"equal": False, "status": "ok", "pred_extracted": "0.5"},
        {"equal": True, "status": "ok", "pred_extracted": "3"},
        {"equal": False, "status": "parse_error", "pred_extracted": None},
        {"equal": True, "status": "ok", "pred_extracted": "27"},
        {"equal": True, "status": "ok", "pred_extracted": "1200"},
    ]
    assert "graded 6 pairs: 4 equal" in p.stderr


def test_cli_stdout_and_stdin():
    p = _run(["-"], stdin='{"gold": "x=3", "pred": "3"}\n')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"equal": True, "status": "ok", "pred_extracted": "3"}


def test_cli_bad_input_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"gold": "1", "pred": "1"}\n{"gold": "1"}\n')
    p = _run([str(bad)])
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "bad.jsonl:2" in p.stderr
    bad.write_text("not json\n")
    p = _run([str(bad)])
    assert p.returncode == 2 and "not valid JSON" in p.stderr
    p = _run([str(tmp_path / "missing.jsonl")])
    assert p.returncode == 2 and p.stderr.startswith("error:")


def test_cli_fallback_modes(tmp_path):
    rows = [{"gold": "18", "pred": "so she makes 18 dollars.<|im_end|>", "response": True},
            {"gold": "18", "pred": "The answer is 18.<|im_end|>", "response": True}]
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    equal = {}
    for mode in ([], ["--fallback"], ["--fallback", "last_number"]):
        p = _run([str(src), "--workers", "1", *mode])
        assert p.returncode == 0, p.stderr
        equal[" ".join(mode)] = [json.loads(x)["equal"] for x in p.stdout.splitlines()]
    # No box: nothing without a fallback; the bare flag reads "the answer is X" only;
    # last_number also takes the last number of the prose (end-of-turn token stripped).
    assert equal == {"": [False, False], "--fallback": [False, True],
                     "--fallback last_number": [True, True]}
    p = _run([str(src), "--fallback", "bogus"])
    assert p.returncode == 2 and "invalid choice: 'bogus'" in p.stderr
