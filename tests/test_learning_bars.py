"""aci_jax.eval.learning_bars: issue 16 item 1's bars, on hand-made evaluation summaries whose
verdicts follow from the issue's text (code families >= 0.8 at >= 90% code; reasoning families
>= 95% of warm-up at 0% code; +30 points overall; selection >= 0.9)."""

import json

import pytest

from aci_jax.eval import learning_bars


def _family(acc, code, forced=1.0):
  return {"accuracy": acc, "code_rate": code, "selection": {"forced_code_accuracy": forced}}


def _summary(acc, sel, **fams):
  return {"accuracy": acc, "selection_accuracy": sel,
          "by_family": {k: _family(*v) for k, v in fams.items()}}


WARMUP = _summary(0.49, 0.5, add=(0.96, 0.0, 1.0), compare=(1.0, 0.0), mul=(0.0, 0.0),
                  powmod=(0.0, 0.0, 0.96))


def _run(tmp_path, name, final, warmup=WARMUP, iteration=3):
  run = tmp_path / name
  for point, s in (("warmup", warmup), (f"iteration_{iteration}", final)):
    (run / "eval" / point).mkdir(parents=True)
    (run / "eval" / point / "toy.summary.json").write_text(json.dumps(s))
  return str(run)


def test_every_bar_met_at_its_edge_passes(tmp_path, capsys):
  # add 0.96 -> 0.92 is 95.8% of the warm-up (bar 0.912); mul exactly 0.80 at exactly 90% code;
  # gain exactly +0.30; selection exactly 0.90.
  final = _summary(0.79, 0.90, add=(0.92, 0.0), compare=(1.0, 0.0), mul=(0.80, 0.90),
                   powmod=(0.84, 1.0))
  assert learning_bars.main([_run(tmp_path, "r", final)]) == 0
  assert "**pass**" in capsys.readouterr().out


@pytest.mark.parametrize("final, reason", [
    # one add problem of 25 coded: reasoning families must not code at all
    (_summary(0.98, 0.97, add=(0.96, 0.04), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(0.96, 1.0)), "add codes on 0.04"),
    # add 0.96 -> 0.88 is 91.7% of its warm-up accuracy
    (_summary(0.97, 0.97, add=(0.88, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(1.0, 1.0)), "add accuracy 0.88"),
    # powmod right but only 88% of the time through code
    (_summary(0.97, 0.97, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(0.92, 0.88)), "powmod code rate 0.88"),
    (_summary(0.96, 0.97, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(0.76, 1.0)), "powmod accuracy 0.76"),
    (_summary(0.78, 0.97, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(1.0, 1.0)), "gain +0.29"),
    (_summary(0.97, 0.89, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
              powmod=(1.0, 1.0)), "selection accuracy 0.89"),
])
def test_each_bar_can_fail_the_run(tmp_path, capsys, final, reason):
  assert learning_bars.main([_run(tmp_path, "r", final)]) == 1
  out = capsys.readouterr().out
  assert "fail" in out and reason in out, out


def test_the_last_evaluated_iteration_is_judged_and_any_failure_fails_the_command(tmp_path):
  good = _summary(0.98, 0.97, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
                  powmod=(0.96, 1.0))
  bad = _summary(0.60, 0.70, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(0.4, 0.4),
                 powmod=(0.2, 0.3))
  run = _run(tmp_path, "r", bad, iteration=2)
  (tmp_path / "r" / "eval" / "iteration_10").mkdir()
  (tmp_path / "r" / "eval" / "iteration_10" / "toy.summary.json").write_text(json.dumps(good))
  (tmp_path / "r" / "eval" / "iteration_11").mkdir()  # started, not evaluated: not judged
  assert learning_bars.judge_run(run).iteration == 10
  assert learning_bars.judge_run(run).passed
  assert not learning_bars.judge_run(run, 2).passed
  assert learning_bars.main([run, "--iteration", "2"]) == 1
  assert learning_bars.main([run, _run(tmp_path, "s", bad)]) == 1  # one bad run of two


def test_a_missing_evaluation_is_a_one_line_error(tmp_path):
  run = _run(tmp_path, "r", WARMUP, iteration=1)
  with pytest.raises(SystemExit, match="iteration_4/toy.summary.json not found"):
    learning_bars.main([run, "--iteration", "4"])


def test_a_family_the_toy_does_not_know_is_a_one_line_error(tmp_path):
  final = _summary(0.98, 0.97, add=(0.96, 0.0), compare=(1.0, 0.0), mul=(1.0, 1.0),
                   powmod=(0.96, 1.0), sqrt=(1.0, 1.0))
  with pytest.raises(SystemExit, match="unknown toy family 'sqrt'"):
    learning_bars.main([_run(tmp_path, "r", final)])
