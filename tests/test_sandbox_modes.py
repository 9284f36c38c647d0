"""Cell-state modes, what the model sees, and the command line (issue 3, deliverables 2, 3, 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aci_jax.sandbox import Sandbox, SandboxConfig, Status
from aci_jax.sandbox import display

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def boxes():
  made = {m: Sandbox(SandboxConfig(mode=m, timeout_s=3.0, max_workers=2))
          for m in ("persistent", "replay", "isolated")}
  yield made
  for b in made.values():
    b.shutdown()


# --- pure display / replay helpers -------------------------------------------------------------
def test_truncate_matches_harness_rule():
  s = "".join(chr(ord("a") + i % 26) for i in range(1000))
  assert display.truncate(s, 400) == s[:200] + "..." + s[-200:]
  assert display.truncate(s[:400], 400) == s[:400]
  assert display.truncate("abcdefg", 4) == "ab...fg"


def test_capture_keeps_head_tail_and_renders_like_full_text():
  data = ("é" * 3000 + "MIDDLE" + "z" * 5000).encode()
  cap = display.Capture(keep=1700)
  for i in range(0, len(data), 777):
    cap.add(data[i:i + 777])
  assert cap.total == len(data)
  assert len(cap.head) + len(cap.tail) <= 3 * 1700
  full = data.decode()
  assert cap.text(400) == full[:200] + "..." + full[-200:]
  short = display.Capture(keep=1700)
  short.add(b"  hi \n")
  assert short.text(400, strip=True) == "hi"


def test_render_rules():
  kw = dict(max_chars=400, strip=True, stdout_on_error=False, empty_text="Done")
  assert display.render("ok", "", "", **kw) == "Done"
  assert display.render("ok", " 4\n", "", **kw) == "4"
  assert display.render("error", "partial", "ValueError: x", **kw) == "ValueError: x"
  assert display.render("error", "partial", "ValueError: x",
                        **dict(kw, stdout_on_error=True)) == "partial\nValueError: x"
  assert display.render("timeout", "", "Timeout Error", **kw) == "Timeout Error"


def test_replay_prelude_follows_harness():
  history = [("import math\nx = 2\nprint(x)", True),
             ("from sympy import sqrt\nimport numpy as np\ny = 1/0", False),
             ("for i in range(3):\n    print(i)\nz = x + 1", True)]
  pieces = display.replay_prelude(history)
  assert pieces[0] == "from sympy import sqrt\nimport numpy as np"
  assert "print" not in "".join(pieces[1:])
  ns = {}
  for p in pieces:
    exec(p, ns)  # prints removed without breaking the for-block
  assert ns["z"] == 3 and "y" not in ns


# --- modes -------------------------------------------------------------------------------------
def test_persistent_keeps_names_within_a_session_only(boxes):
  sb = boxes["persistent"]
  assert sb.run("p1", "a = 41").output == "Done"
  assert sb.run("p1", "a += 1\na").output == "42"
  r = sb.run("p2", "a")
  assert r.status == Status.ERROR and r.output == "NameError: name 'a' is not defined"
  sb.close_session("p1")
  r = sb.run("p1", "a")  # a closed session starts over
  assert r.status == Status.ERROR
  sb.close_session("p1")
  sb.close_session("p2")


def test_persistent_state_survives_a_killed_cell_by_replay(boxes):
  sb = boxes["persistent"]
  sb.run("p3", "import math\nk = math.factorial(5)\nprint('shown once')")
  assert sb.run("p3", "import os\nos._exit(1)").status == Status.KILLED
  r = sb.run("p3", "k + 1")  # rebuilt from the ok cells, their prints removed
  assert r.status == Status.OK and r.output == "121"
  sb.close_session("p3")


def test_persistent_module_state_does_not_cross_sessions(boxes):
  sb = boxes["persistent"]
  sb.run("m1", "import math\nmath.pi = 3")
  assert sb.run("m2", "import math\nmath.pi").output == "3.141592653589793"
  sb.close_session("m1")
  sb.close_session("m2")


def test_replay_reruns_successful_cells_without_prints(boxes):
  sb = boxes["replay"]
  assert sb.run("r", "x = 5\nprint('first')").output == "first"
  assert sb.run("r", "import fractions\ny = x / 0").status == Status.ERROR
  # The failed cell contributes only its import; x comes from replaying cell 1 silently.
  r = sb.run("r", "print(x * 2, fractions.Fraction(1, 3))")
  assert r.output == "10 1/3"
  assert sb.run("r", "y").status == Status.ERROR
  # Every cell is a fresh process: what a failed cell did (beyond its imports) is gone.
  sb.run("r", "import math\nmath.e = 0\n1/0")
  assert sb.run("r", "math.e > 2").output == "True"
  # ...while what successful cells did is rebuilt, side effects included.
  sb.run("r", "math.tau = 0")
  assert sb.run("r", "math.tau").output == "0"
  sb.close_session("r")


def test_isolated_sees_only_the_current_cell(boxes):
  sb = boxes["isolated"]
  assert sb.run("i", "q = 7\nq").output == "7"
  r = sb.run("i", "q")
  assert r.status == Status.ERROR and "NameError" in r.output
  sb.close_session("i")


def test_repl_display_and_errors(boxes):
  sb = boxes["persistent"]
  cases = [("print('a')\n1 + 1", "a\n2"), ("x = None\nx", "Done"), ("'s'", "'s'"),
           ("import sympy\nsympy.factor(sympy.Symbol('t')**2 - 1)", "(t - 1)*(t + 1)"),
           ("def f():\n  return 3\nf()", "3"), ("raise ValueError('bad')", "ValueError: bad"),
           ("x = (", None), ("import sys\nsys.exit(0)", "Done"),
           ("import sys\nsys.exit(3)", "SystemExit: 3"),
           ("print('x' * 1000)", "x" * 200 + "..." + "x" * 200)]
  for code, want in cases:
    r = sb.run("d", code)
    if want is None:
      assert r.status == Status.ERROR and r.output.startswith("SyntaxError"), r.output
    else:
      assert r.output == want, (code, r.output)
  sb.close_session("d")


def test_display_options_are_configurable():
  with Sandbox(SandboxConfig(max_chars=10, stdout_on_error=True, empty_text="[no output]",
                             display_last_expr=False, timeout_s=0.5,
                             timeout_text="TimeoutError: 0.5 s")) as sb:
    assert sb.run(1, "print('0123456789abcdef')").output == "01234...bcdef"
    assert sb.run(1, "7").output == "[no output]"
    assert sb.run(1, "print('so far')\n1/0").output == "so far\nZeroD... zero"
    assert sb.run(1, "while 1: pass").output == "Timeo...0.5 s"
    r = sb.run(2, "import time\nprint('t', flush=True)\ntime.sleep(5)")
    assert r.status == Status.TIMEOUT and r.output == "t\nTimeo...0.5 s"


# --- command line ------------------------------------------------------------------------------
def _cli(tmp_path, lines, *args):
  f = tmp_path / "cells.jsonl"
  f.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return subprocess.run([sys.executable, "-m", "aci_jax.sandbox", str(f), "--quiet", *args],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_runs_cells_in_order_per_session(tmp_path):
  p = _cli(tmp_path, [{"session": "a", "code": "v = 2"}, {"session": "b", "code": "v"},
                      {"session": "a", "code": "v ** 10"},
                      {"session": "a", "code": "while True: pass"}], "--timeout", "1")
  assert p.returncode == 0, p.stderr
  out = [json.loads(l) for l in p.stdout.splitlines()]
  assert [o["status"] for o in out] == ["ok", "error", "ok", "timeout"]
  assert out[2]["output"] == "1024" and out[3]["output"] == "Timeout Error"
  assert set(out[0]) == {"session", "status", "output", "seconds"}
  assert out[1]["session"] == "b" and 1.0 <= out[3]["seconds"] < 2.0


def test_cli_modes_and_options(tmp_path):
  p = _cli(tmp_path, [{"session": 1, "code": "v = 2"}, {"session": 1, "code": "print('z'*50)"},
                      {"session": 1, "code": "v"}], "--mode", "isolated", "--max-chars", "10")
  out = [json.loads(l) for l in p.stdout.splitlines()]
  assert [o["status"] for o in out] == ["ok", "ok", "error"]
  assert out[1]["output"] == "zzzzz...zzzzz"


def test_cli_bad_input_is_a_clear_error(tmp_path):
  p = _cli(tmp_path, [{"code": "1"}])
  assert p.returncode != 0 and "expected" in p.stderr and len(p.stderr.splitlines()) == 1
  p = subprocess.run([sys.executable, "-m", "aci_jax.sandbox", str(tmp_path / "missing.jsonl")],
                     capture_output=True, text=True, cwd=REPO, timeout=60)
  assert p.returncode == 2 and "cannot read" in p.stderr
