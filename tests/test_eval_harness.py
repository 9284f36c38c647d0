"""Evaluation metrics on scripted trajectories whose expected values are worked out by hand:
accuracy, code rate, cells per answer, tool error rate, truncation, mean@k and selection
accuracy (reasoning solves / only code solves / neither solves), per-family breakdowns, the
requests the harness sends (forced prefix, bans, greedy vs sampled runs) and the files."""

import dataclasses
import json
import math

import pytest

from aci_jax import eval as ev
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.grading import Grader
from aci_jax import tool_format
from aci_jax.rollout import (Cell, RolloutConfig, RolloutResult, RolloutStats, Trajectory,
                             read_jsonl)
from aci_jax.rollout.trajectory import SRC_FORCED, SRC_SAMPLED
from aci_jax.sampling import SamplingParams

EOS = "<|endoftext|>"


def cot(ans):
  return (f"Thinking. \\boxed{{{ans}}}{EOS}", [], "eos")


def code(ans, *statuses, printed=None, stop="eos"):
  cells = [Cell("print(1)\n", printed or str(ans), s) for s in statuses]
  return ("```python\nprint(1)\n```\n```output\n1\n```\n" + f"\\boxed{{{ans}}}{EOS}", cells, stop)


# problem -> (family, gold, {mode: [greedy response], "sampled": [k responses]})
# Worked out by hand in test_metrics_by_hand.
SCRIPT = {
    "P0": ("add", "10", {"native": cot(10), "code": code(10, "ok"), "cot": cot(10),
                         "sampled": [cot(10), cot(10)]}),
    "P1": ("add", "11", {"native": code(11, "ok"), "code": code(11, "ok"), "cot": cot(11),
                         "sampled": [cot(11), cot(99)]}),
    "P2": ("mul", "12", {"native": cot(13), "code": code(12, "ok"), "cot": cot(13),
                         "sampled": [cot(12), cot(0)]}),
    "P3": ("mul", "13", {"native": code(13, "error", "ok"), "code": code(13, "ok"), "cot": cot(7),
                         "sampled": [code(13, "ok"), code(13, "ok")]}),
    "P4": ("mul", "14", {"native": code(14, "ok", stop="length"), "code": code(1, "ok"),
                         "cot": cot(2), "sampled": [cot(3), cot(14)]}),
    "P5": ("powmod", "15", {"native": ("I do not know." + EOS, [], "eos"),
                            "code": code(16, "timeout"), "cot": cot(17),
                            "sampled": [cot(1), cot(2)]}),
}


def scripted_engine_class(script):
  """A stand-in with RolloutEngine's constructor and run(params, requests, sampling)."""

  class ScriptedEngine:
    runs = []  # (sampling params, requests) of every run

    def __init__(self, model_cfg, tokenizer, cfg, executor=None, mesh=None):
      self.model_cfg, self.tok, self.cfg, self.executor, self.mesh = (model_cfg, tokenizer, cfg,
                                                                      executor, mesh)
      self.tool_format = tool_format.get(cfg.tool_format)

    def run(self, params, requests, sampling=None):
      sampling = sampling or self.cfg.sampling
      self.runs.append((sampling, list(requests)))
      out = []
      for r in requests:
        text = self.tok.decode(r.prompt_ids)
        assert text.startswith("<|im_start|>") and text.endswith("<|im_end|>")
        fam, gold, resp = script[text[len("<|im_start|>"):-len("<|im_end|>")]]
        if sampling.greedy:
          body, cells, stop = resp[r.mode]
        else:
          assert r.mode == "native"
          body, cells, stop = resp["sampled"][r.sample_index % len(resp["sampled"])]
        ids = list(r.prefix_ids) + self.tok.encode(body)
        src = [SRC_FORCED] * len(r.prefix_ids) + [SRC_SAMPLED] * (len(ids) - len(r.prefix_ids))
        text = self.tok.decode(r.prefix_ids) + body
        out.append(Trajectory(r.prompt_index, r.sample_index, r.mode, list(r.prompt_ids), ids,
                              [0.0] * len(ids), src, list(cells), stop, text,
                              meta=dict(r.meta)))
      return RolloutResult(out, RolloutStats())

  return ScriptedEngine


@pytest.fixture(scope="module")
def grader():
  with Grader(num_workers=1) as g:
    yield g


@pytest.fixture
def setup():
  tok = char_tokenizer()
  cls = scripted_engine_class(SCRIPT)
  cls.runs.clear()
  engine = cls(None, tok, RolloutConfig(max_prompt_tokens=64,
                                        sampling=SamplingParams(greedy=True)))
  problems = [{"problem": k, "answer": v[1], "family": v[0], "id": f"id{k}"}
              for k, v in SCRIPT.items()]
  return tok, cls, engine, problems


def test_metrics_by_hand(setup, grader, tmp_path):
  tok, cls, engine, problems = setup
  s = ev.evaluate(engine, None, tok, problems, grader, samples=2, temperature=0.7, top_p=0.9,
                  name="toy", out_dir=str(tmp_path))
  g = s["greedy"]
  # Greedy: correct P0, P1, P3 (P4's box is right but the response was truncated: 0).
  assert g["accuracy"] == pytest.approx(3 / 6) == s["accuracy"]
  assert g["code_rate"] == pytest.approx(3 / 6) == s["code_rate"]  # P1, P3, P4
  assert g["cells"] == 4  # P1: 1, P3: 2, P4: 1
  assert g["cells_per_answer"] == pytest.approx(4 / 6)
  assert g["cells_per_code_answer"] == pytest.approx(4 / 3)
  assert g["tool_error_rate"] == pytest.approx(1 / 4)  # P3's first cell
  assert g["tool_errors"] == {"error": 1}
  assert g["truncation_rate"] == pytest.approx(1 / 6)
  # mean@2: 2 + 1 + 1 + 2 + 1 + 0 correct of 12; only P3's samples use code.
  sm = s["sampled"]
  assert sm["accuracy"] == pytest.approx(7 / 12) == s["mean_at_k"]
  assert sm["k"] == 2 and sm["temperature"] == 0.7 and sm["top_p"] == 0.9
  assert sm["code_rate"] == pytest.approx(2 / 12)
  assert sm["tool_error_rate"] == 0.0
  # Selection. P0: reasoning solves, chose reasoning (right). P1: reasoning solves, chose code
  # (wrong). P2: only code solves, chose reasoning (wrong). P3: only code solves, chose code
  # (right). P4, P5: neither forced mode solves -> excluded.
  sel = s["selection"]
  assert sel["eligible"] == 4 and sel["excluded_neither_solves"] == 2
  assert sel["accuracy"] == pytest.approx(2 / 4) == s["selection_accuracy"]
  assert sel["right_cot"] == 2 and sel["right_code"] == 2
  assert sel["confusion"] == {"right_cot_chose_cot": 1, "right_cot_chose_code": 1,
                              "right_code_chose_cot": 1, "right_code_chose_code": 1}
  assert sel["forced_code_accuracy"] == pytest.approx(4 / 6)
  assert sel["forced_cot_accuracy"] == pytest.approx(2 / 6)
  # Per family.
  fam = s["by_family"]
  assert set(fam) == {"add", "mul", "powmod"}
  assert (fam["add"]["accuracy"], fam["add"]["code_rate"], fam["add"]["selection_accuracy"]) \
      == (1.0, 0.5, 0.5)
  assert fam["mul"]["accuracy"] == pytest.approx(1 / 3)
  assert fam["mul"]["code_rate"] == pytest.approx(2 / 3)
  assert fam["mul"]["selection_accuracy"] == 0.5
  assert fam["mul"]["selection"]["excluded_neither_solves"] == 1
  assert fam["mul"]["mean_at_k"] == pytest.approx(4 / 6)
  assert fam["powmod"]["selection_accuracy"] is None  # nothing eligible
  assert fam["powmod"]["selection"]["eligible"] == 0
  assert fam["powmod"]["num_problems"] == 1
  assert "by_subject" not in s

  # Files: every trajectory with its reward and meta; the summary as returned.
  trajs = read_jsonl(str(tmp_path / "toy.trajectories.jsonl"))
  assert len(trajs) == 6 * 3 + 6 * 2
  by = {(t.meta["problem_id"], t.meta["pass"], t.meta.get("sample", 0)): t for t in trajs}
  assert by[("idP4", "greedy", 0)].reward == 0.0
  assert by[("idP4", "greedy", 0)].meta["grade_status"] == "truncated"
  assert by[("idP5", "greedy", 0)].meta["grade_status"] == "parse_error"
  assert by[("idP3", "greedy", 0)].reward == 1.0
  p4 = by[("idP4", "sampled", 1)]
  assert p4.reward == 1.0 and p4.meta["pred"] == "14"
  assert by[("idP2", "forced_code", 0)].meta == {
      "benchmark": "toy", "problem_id": "idP2", "pass": "forced_code", "gold": "12",
      "family": "mul", "pred": "12", "grade_status": "ok"}
  assert all(t.reward in (0.0, 1.0) for t in trajs)
  with open(tmp_path / "toy.summary.json") as f:
    assert json.load(f) == json.loads(json.dumps(s))


def test_requests_sent_to_the_engines(setup, grader):
  tok, cls, engine, problems = setup
  ev.evaluate(engine, None, tok, problems, grader, samples=3, temperature=0.5)
  (sp_greedy, greedy), (sp_sampled, sampled) = cls.runs
  assert sp_greedy.greedy and not sp_sampled.greedy
  assert (sp_sampled.temperature, sp_sampled.top_p) == (0.5, 1.0)
  assert len(greedy) == 18 and len(sampled) == 18
  prefix = tok.encode("```python\n")
  for r in greedy:
    assert r.sample_index == 0
    if r.mode == "code":
      assert r.prefix_ids == prefix and not r.ban
    elif r.mode == "cot":
      assert r.ban and not r.prefix_ids
    else:
      assert r.mode == "native" and not r.ban and not r.prefix_ids
  assert sorted((r.prompt_index, r.sample_index) for r in sampled) == [
      (i, j) for i in range(6) for j in range(3)]
  assert all(r.mode == "native" and not r.ban and not r.prefix_ids for r in sampled)
  # The default prompt: the problem as the user message of the chat template.
  assert greedy[0].prompt_ids == tok.chat_ids([{"role": "user", "content": "P0"}])
  # An engine configured to sample: the greedy passes still run greedy, each run passing its
  # own sampling parameters to the one engine.
  cls.runs.clear()
  hot = cls(None, tok, dataclasses.replace(engine.cfg, sampling=SamplingParams(temperature=0.5)))
  ev.evaluate(hot, None, tok, problems, grader, samples=1, temperature=0.7, selection=False)
  ev.evaluate(hot, None, tok, problems, grader, samples=0, selection=False)
  greedy = SamplingParams(greedy=True)
  assert [sp for sp, _ in cls.runs] == [greedy, SamplingParams(temperature=0.7), greedy]


def test_without_selection_or_samples(setup, grader):
  tok, cls, engine, problems = setup
  s = ev.evaluate(engine, None, tok, problems[:2], grader, samples=0, selection=False)
  assert s["selection"] is None and s["selection_accuracy"] is None
  assert "sampled" not in s and s["accuracy"] == 1.0
  assert len(cls.runs) == 1 and len(cls.runs[0][1]) == 2


def test_subject_breakdown_and_custom_prompt(setup, grader):
  tok, cls, engine, _ = setup
  problems = [{"problem": "P0", "answer": "10", "subject": "Algebra"},
              {"problem": "P2", "answer": "12", "subject": "Number Theory"}]
  s = ev.evaluate(engine, None, tok, problems, grader, samples=0,
                  prompt_fn=lambda t, p: t.chat_ids([{"role": "user", "content": p}]))
  assert s["by_subject"]["Algebra"]["accuracy"] == 1.0
  assert s["by_subject"]["Number Theory"]["accuracy"] == 0.0
  assert s["by_subject"]["Number Theory"]["selection"]["right_code"] == 1
  assert s["benchmark"] == "eval"


def test_bad_inputs_are_clear_errors(setup, grader):
  tok, cls, engine, problems = setup
  with pytest.raises(ValueError, match="no problems"):
    ev.evaluate(engine, None, tok, [], grader)
  with pytest.raises(ValueError, match="problem 1 needs 'problem'"):
    ev.evaluate(engine, None, tok, [problems[0], {"question": "x"}], grader)
  long = [{"problem": "x" * 80, "answer": "1", "id": "long"}]
  with pytest.raises(ValueError, match=r"every prompt of 'eval' is over max_prompt_tokens=64"):
    ev.evaluate(engine, None, tok, long, grader)
  with pytest.raises(ValueError, match="graded"):
    ev.response_metrics([Trajectory(0, 0, "native", [1], [1], [0.0], [0], [], "eos", "x")])


def test_overlong_prompts_are_skipped_and_counted(setup, grader):
  """One prompt over max_prompt_tokens no longer aborts the evaluation: it is left out of
  every pass and counted; the metrics are those of the other problems."""
  tok, cls, engine, problems = setup
  long = {"problem": "x" * 80, "answer": "1", "id": "long", "family": "add"}
  s = ev.evaluate(engine, None, tok, [problems[0], long, problems[1]], grader, samples=0)
  ref = ev.evaluate(engine, None, tok, [problems[0], problems[1]], grader, samples=0)
  assert s["skipped_overlong"] == 1 and s["skipped_ids"] == ["long"]
  assert ref["skipped_overlong"] == 0 and ref["skipped_ids"] == []
  for key in ("num_problems", "accuracy", "code_rate", "selection_accuracy"):
    assert s[key] == ref[key], key
  sent = [r.meta["problem_id"] for r in cls.runs[0][1]]
  assert "long" not in sent and "idP1" in sent


def test_system_message_frames_the_prompt():
  tok = char_tokenizer()
  plain = ev.chat_prompt(tok, "P0")
  framed = ev.chat_prompt(tok, "P0", system="Be brief.")
  assert tok.decode(framed) == "<|im_start|>Be brief.<|im_end|>" + tok.decode(plain)
  assert ev.chat_prompt(tok, "P0", system="") == plain


def test_no_code_and_limit_records_are_not_code_use():
  """A response whose only "cells" are the no-code / limit messages ran no code: it is a
  reasoning choice for the code rate and for selection."""
  def t(reward, *statuses):
    cells = [Cell("", "msg", s) for s in statuses]
    return Trajectory(0, 0, "native", [1], [1], [0.0], [0], cells, "eos", "", reward=reward)

  m = ev.response_metrics([t(1.0, "no_code"), t(1.0, "limit"), t(1.0, "ok"), t(0.0)])
  assert m["code_rate"] == 0.25
  sel = ev.selection_metrics([t(1.0, "no_code")], [t(1.0, "ok")], [t(1.0)])
  assert sel["accuracy"] == 1.0 and sel["confusion"]["right_cot_chose_cot"] == 1


def test_selection_metric_edge_cases():
  def t(reward, used_code=False):
    cells = [Cell("print(1)", "1", "ok")] if used_code else []
    return Trajectory(0, 0, "native", [1], [1], [0.0], [0], cells, "eos", "", reward=reward)

  # Both forced modes solve: the right choice is reasoning, even though code also works.
  m = ev.selection_metrics([t(1.0, used_code=True)], [t(1.0, True)], [t(1.0)])
  assert m["accuracy"] == 0.0 and m["confusion"]["right_cot_chose_code"] == 1
  # Selection judges the choice, not the native answer: a wrong native reasoning answer on a
  # problem reasoning can solve still counts as the right choice.
  m = ev.selection_metrics([t(0.0)], [t(0.0, True)], [t(1.0)])
  assert m["accuracy"] == 1.0
  m = ev.selection_metrics([t(0.0)], [t(0.0, True)], [t(0.0)])
  assert m["accuracy"] is None and m["excluded_neither_solves"] == 1
  assert math.isclose(ev.response_metrics([t(1.0), t(0.0, True)])["code_rate"], 0.5)
  with pytest.raises(ValueError, match="lengths differ"):
    ev.selection_metrics([t(1.0)], [], [])
