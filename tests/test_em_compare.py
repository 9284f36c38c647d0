"""aci_jax.em.compare on hand-written run directories: cumulative rollouts and optimizer steps
per evaluation point, per-arm means and sample standard deviations (ddof = 1), --label arms,
the markdown, JSON and PNG outputs, and one-line errors. Expected numbers are worked out by
hand in the comments, not read from the code."""

import json
import math
import os

import pytest

from aci_jax.em import compare


def _ev(acc, code, sel, fams):
  """An eval point as summary.json keeps it: {"toy": {...}}; fams = {family: (acc, code)}."""
  return {"toy": {"accuracy": acc, "code_rate": code, "selection_accuracy": sel,
                  "mean_at_k": None, "per_family": {
                      f: {"accuracy": a, "code_rate": c, "selection_accuracy": a}
                      for f, (a, c) in fams.items()}}}


def _it(i, rollouts, steps, above, below, ev=None, any_mul=None):
  e = {"iteration": i, "em/iteration": i, "em/rollouts": rollouts, "em/mstep_steps": steps,
       "estep/native_code_rate": 0.5, "estep/native_code_rate_query_hist": [1] * 10,
       "estep/native_code_rate_above_95": above, "estep/native_code_rate_below_05": below}
  if any_mul is not None:
    e.update({"estep/family/mul/any_native_code": any_mul,
              "estep/family/mul/native_code_rate": any_mul / 2,
              "estep/family/add/any_native_code": 0.0})
  if ev is not None:
    e["eval"] = ev
  return e


def _write(path, algorithm, seed, warmup, iterations, final):
  os.makedirs(path)
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump({"algorithm": algorithm, "warmup": warmup, "iterations": iterations,
               "final": final, "wall_seconds": 1.0, "sandbox": {}}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": seed, "em": {"algorithm": algorithm}, "task": {}}, f)
  return str(path)


@pytest.fixture
def runs(tmp_path):
  """Two autocode seeds (iteration 2 not evaluated) and one grpo run (last iteration not
  evaluated: summary["final"] is its final point)."""
  a_final = _ev(0.9, 0.5, 0.95, {"add": (1.0, 0.0), "mul": (0.8, 1.0)})
  a = _write(tmp_path / "runs" / "ac_s1", "autocode", 1,
             _ev(0.4, 0.0, 0.4, {"add": (0.8, 0.0), "mul": (0.0, 0.0)}),
             [_it(1, 100, 10, 0.0, 0.8, _ev(0.5, 0.1, 0.6, {}), any_mul=0.25),
              _it(2, 200, 20, 0.2, 0.6, any_mul=0.5),
              _it(3, 300, 30, 0.5, 0.3, a_final, any_mul=0.75)], a_final)
  b_final = _ev(0.7, 0.25, 0.85, {"add": (0.8, 0.0), "mul": (0.6, 0.5)})
  b = _write(tmp_path / "runs" / "ac_s2", "autocode", 2,
             _ev(0.5, 0.0, 0.5, {"add": (0.9, 0.0), "mul": (0.1, 0.0)}),
             [_it(1, 50, 5, 0.0, 0.7, _ev(0.6, 0.1, 0.7, {}), any_mul=0.75),
              _it(2, 100, 5, 0.1, 0.6, any_mul=0.25),
              _it(3, 100, 5, 0.3, 0.5, b_final, any_mul=0.5)], b_final)
  c = _write(tmp_path / "runs" / "grpo_s0", "grpo", 0,
             _ev(0.2, 0.0, 0.2, {"mul": (0.0, 0.0)}),
             [_it(1, 40, 4, 0.0, 1.0, _ev(0.3, 0.0, 0.3, {"mul": (0.0, 0.0)})),
              _it(2, 60, 6, 0.0, 1.0)],
             _ev(0.35, 0.05, 0.4, {"mul": (0.1, 0.2)}))
  return a, b, c


def test_points_are_cumulative_and_skip_unevaluated_iterations(runs):
  a, _, c = runs
  pts = compare.run_points(compare.load_run(a)["summary"], "toy")
  # warm-up at 0/0; iteration 1 after 100 rollouts / 10 steps; iteration 2 has no eval;
  # iteration 3 after 100+200+300 = 600 rollouts and 10+20+30 = 60 steps.
  assert [(p["iteration"], p["rollouts"], p["steps"], p["accuracy"]) for p in pts] == [
      (0, 0, 0, 0.4), (1, 100, 10, 0.5), (3, 600, 60, 0.9)]
  assert pts[-1]["per_family"]["mul"] == {"accuracy": 0.8, "code_rate": 1.0}
  # grpo: the last iteration (2) was not evaluated, so "final" is its point, at 40+60 / 4+6.
  pts = compare.run_points(compare.load_run(c)["summary"], "toy")
  assert [(p["iteration"], p["rollouts"], p["steps"], p["accuracy"]) for p in pts] == [
      (0, 0, 0, 0.2), (1, 40, 4, 0.3), (2, 100, 10, 0.35)]


def test_stat_is_sample_sd():
  s = compare.stat([1.0, 2.0, 3.0, None])  # None is skipped
  assert s["n"] == 3 and s["mean"] == pytest.approx(2.0)
  assert s["sd"] == pytest.approx(1.0)  # sample: sqrt((1+0+1)/2); population would be 0.816
  assert compare.stat([0.5])["sd"] is None
  assert compare.stat([]) == {"mean": None, "sd": None, "n": 0}


def test_cli_arms_means_and_outputs(runs, tmp_path, capsys):
  out = str(tmp_path / "out")
  assert compare.main([*runs, "--out", out]) == 0
  res = json.load(open(os.path.join(out, "compare.json")))
  assert list(res["arms"]) == ["autocode", "grpo"]  # default arm: the algorithm
  ac = res["arms"]["autocode"]
  assert ac["n"] == 2
  # final accuracy 0.9, 0.7: mean 0.8, sample sd sqrt(0.01 + 0.01) = 0.1414 (population 0.1)
  assert ac["final"]["accuracy"]["mean"] == pytest.approx(0.8)
  assert ac["final"]["accuracy"]["sd"] == pytest.approx(math.sqrt(0.02))
  assert ac["final"]["selection_accuracy"]["mean"] == pytest.approx(0.9)  # (0.95 + 0.85) / 2
  assert ac["warmup_accuracy"]["mean"] == pytest.approx(0.45)
  assert ac["warmup_accuracy"]["sd"] == pytest.approx(math.sqrt(0.005))
  mul = ac["final"]["per_family"]["mul"]
  assert mul["accuracy"]["mean"] == pytest.approx(0.7)
  assert mul["code_rate"]["mean"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2
  assert mul["code_rate"]["sd"] == pytest.approx(math.sqrt(0.125))
  # the mean curve, aligned by iteration: iteration 1 at (100+50)/2 rollouts, (10+5)/2 steps;
  # iteration 3 at (600+250)/2 = 425 rollouts, (60+15)/2 = 37.5 steps.
  curve = {c["iteration"]: c for c in ac["curve"]}
  assert sorted(curve) == [0, 1, 3]
  assert curve[1]["rollouts"]["mean"] == pytest.approx(75)
  assert curve[1]["steps"]["mean"] == pytest.approx(7.5)
  assert curve[1]["accuracy"]["mean"] == pytest.approx(0.55)
  assert curve[3]["rollouts"]["mean"] == pytest.approx(425)
  assert curve[3]["steps"]["mean"] == pytest.approx(37.5)
  assert curve[1]["selection_accuracy"]["mean"] == pytest.approx(0.65)  # (0.6 + 0.7) / 2
  assert curve[3]["code_rate"]["mean"] == pytest.approx(0.375)  # (0.5 + 0.25) / 2
  pol = {p["iteration"]: p for p in ac["polarisation"]}
  assert pol[3]["above_95"]["mean"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
  assert pol[3]["below_05"]["mean"] == pytest.approx(0.4)  # (0.3 + 0.5) / 2
  # any native code, mul: run 1 (0.25, 0.5, 0.75) mean 0.5, first 0.25;
  # run 2 (0.75, 0.25, 0.5) mean 0.5, first 0.75 -> over runs: 0.5, first 0.5 sd 0.3536
  anym = ac["any_native_code"]["mul"]
  assert anym["mean"]["mean"] == pytest.approx(0.5) and anym["mean"]["sd"] == pytest.approx(0)
  assert anym["first"]["mean"] == pytest.approx(0.5)
  assert anym["first"]["sd"] == pytest.approx(math.sqrt(0.125))
  # every E-step's histogram is [1] * 10 in both runs: 0.1 of the queries in each bin
  hist = {h["iteration"]: h for h in ac["code_rate_histogram"]}
  assert sorted(hist) == [1, 2, 3] and hist[2]["n"] == 2
  assert hist[2]["fractions"] == pytest.approx([0.1] * 10)
  grpo = res["arms"]["grpo"]
  assert grpo["n"] == 1 and grpo["final"]["accuracy"] == {"mean": 0.35, "sd": None, "n": 1}
  assert grpo["final"]["rollouts"]["mean"] == 100 and grpo["any_native_code"] == {}
  md = capsys.readouterr().out
  assert md == open(os.path.join(out, "compare.md")).read()
  assert "| autocode | 2 |" in md and "| grpo | 1 |" in md
  assert "0.800 ± 0.141" in md and "## Polarisation" in md
  assert "at least one native code rollout" in md and runs[2] in md
  for name in ("accuracy_vs_rollouts", "accuracy_vs_steps", "polarisation",
               "code_rate_by_family", "code_rate_histograms"):
    assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000


def test_histograms_are_fractions_averaged_per_run():
  # run 1: 3 queries at rate 0, 1 at rate 1 -> [0.75, 0, ..., 0.25]; run 2: 1 query at 0 of 1
  # -> [1, 0, ...]. Each run weighs the same: bin 0 = (0.75 + 1) / 2, bin 9 = 0.125, although
  # pooled counts would give 4/5 and 1/5. An E-step logged without a histogram is left out.
  def summ(*hists):
    return {"iterations": [{"iteration": i + 1, "estep/native_code_rate_query_hist": h}
                           for i, h in enumerate(hists)]}
  h1, h2 = [3] + [0] * 8 + [1], [1] + [0] * 9
  mean = compare._mean_histograms([compare.run_histograms(summ(h1, None)),
                                   compare.run_histograms(summ(h2, [0] * 10))])
  assert [m["iteration"] for m in mean] == [1] and mean[0]["n"] == 2
  assert mean[0]["fractions"] == pytest.approx([0.875] + [0.0] * 8 + [0.125])


def test_paired_differences_use_only_the_seeds_both_arms_ran(tmp_path, capsys):
  def run(name, algorithm, seed, final_acc):
    fin = _ev(final_acc, 0.0, 0.5, {})
    return _write(tmp_path / name, algorithm, seed, _ev(0.1, 0.0, 0.1, {}),
                  [_it(1, 10, 1, 0.0, 1.0, fin)], fin)
  dirs = [run("a1", "autocode", 1, 0.9), run("a2", "autocode", 2, 0.6),
          run("a3", "autocode", 3, 0.5), run("g1", "grpo", 1, 0.5), run("g2", "grpo", 2, 0.6),
          run("g4", "grpo", 4, 0.9)]
  out = str(tmp_path / "out")
  assert compare.main([*dirs, "--out", out]) == 0
  pair = json.load(open(os.path.join(out, "compare.json")))["paired"]
  assert pair["against"] == "autocode"
  g = pair["arms"]["grpo"]
  # common seeds 1 and 2 (3 and 4 have no partner): differences 0.9-0.5 = 0.4 and 0.6-0.6 = 0,
  # mean 0.2, sample sd sqrt(0.04 + 0.04) = 0.2828; one win, one tie. Unpaired, the arms'
  # means would be equal (0.667 both) and say nothing.
  assert g["seeds"] == [1, 2] and g["wins"] == 1 and g["ties"] == 1
  assert g["diff"]["mean"] == pytest.approx(0.2) and g["diff"]["sd"] == pytest.approx(0.08 ** .5)
  md = capsys.readouterr().out
  assert "## Paired by seed: autocode minus each arm" in md
  assert "| grpo | 2 | 0.200 ± 0.283 | 1 of 2 |" in md


def test_labels_make_arms_first_match_wins(runs, tmp_path, capsys):
  a, b, c = runs
  out = str(tmp_path / "out")
  assert compare.main([a, b, c, "--out", out, "--label", "eps=*ac_s2",
                       "--label", "other=*ac_*"]) == 0
  res = json.load(open(os.path.join(out, "compare.json")))
  arms = {name: [r["dir"] for r in arm["runs"]] for name, arm in res["arms"].items()}
  assert arms == {"other": [a], "eps": [b], "grpo": [c]}
  assert res["arms"]["eps"]["final"]["accuracy"]["mean"] == pytest.approx(0.7)
  assert "| eps | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_bad_run_dir_is_one_line_error(runs, tmp_path, capsys, content):
  bad = tmp_path / "bad"
  bad.mkdir()
  if content is not None:
    (bad / "summary.json").write_text(content)
  assert compare.main([runs[0], str(bad), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "summary.json" in err
  assert not (tmp_path / "out").exists()


def test_bad_label_and_benchmark(runs, tmp_path, capsys):
  assert compare.main([runs[0], "--out", str(tmp_path / "o"), "--label", "nameonly"]) == 2
  assert compare.main([runs[0], "--out", str(tmp_path / "o"), "--benchmark", "math"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and "NAME=GLOB" in err[0] and "'math'" in err[1]
