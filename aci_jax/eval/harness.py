"""Benchmark evaluation: greedy and mean@k accuracy, tool-use statistics, selection accuracy.

    summary = evaluate(engine, params, tok, problems, grader, samples=4, temperature=0.6,
                       out_dir="runs/eval", name="math500")

Passes (all through `RolloutEngine.run`, so the same sampler, sandbox and limits as training;
each run passes its own sampling parameters):

- greedy: one native response per problem (the model decides whether to write code);
- sampled: `samples` native responses per problem at `temperature` / `top_p` (mean@k);
- selection: two more greedy responses per problem, one forced into code (the engine's tool
  format's code prefix, "```python\\n" by default) and one forced into reasoning (the format's
  ban strings, every code fence by default, banned on the device from their first character,
  in any tokenisation). The right choice for a problem is reasoning if the forced-reasoning
  response is correct, code if only the forced-code one is; problems neither solves are
  excluded. Selection accuracy compares the right choice with the native greedy
  response's choice (ran a cell or not). Exact definitions: docs/evaluation.md.

Prompts over the engine's `max_prompt_tokens` (with the forced prefix) are skipped and counted
(`skipped_overlong`), not allowed to abort the evaluation.

Every trajectory gets its reward (1.0 / 0.0; truncated responses score 0 without grading) and
`meta` (benchmark, problem id, pass, gold, prediction, group keys); they are written as JSONL
(`aci_jax.rollout.write_jsonl`) and the summary as JSON, both atomically.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Callable, Sequence

import jax

from aci_jax import fileio
from aci_jax.rollout import Request, Trajectory, write_jsonl
from aci_jax.sampling import SamplingParams

log = logging.getLogger(__name__)

GROUP_KEYS = ("family", "subject")  # problem fields that get a per-group breakdown
PASSES = ("greedy", "sampled", "forced_code", "forced_cot")


def user_message(problem: str, instruction: str | None = None) -> str:
  """The user turn of a task prompt: the problem, then the run's answer-format instruction
  (`task.instruction`, e.g. "Please reason step by step, and put your final answer within
  \\boxed{}.") after a blank line if there is one. Warm-up demonstrations, E-step rollouts
  and evaluation all frame a problem with this, so the policy is trained on the prompts it is
  asked."""
  return f"{problem}\n\n{instruction}" if instruction else problem


def chat_prompt(tokenizer, problem: str, system: str | None = None,
                instruction: str | None = None) -> list[int]:
  """Default prompt: `user_message(problem, instruction)` as the user message of the
  tokenizer's chat template, after `system` as the system message if given (the run's
  `data.system`, as in warm-up SFT).

  For checkpoints without a template the tokenizer falls back to plain text; the toy's char
  tokenizer has a two-token template (`<|im_start|>problem<|im_end|>`), so this serves it too.
  """
  messages = [{"role": "system", "content": system}] if system else []
  return list(tokenizer.chat_ids(messages + [{"role": "user",
                                              "content": user_message(problem, instruction)}]))


# ------------------------------------------------------------------------------ grading


def grade_trajectories(grader, trajectories: Sequence[Trajectory], golds: Sequence) -> list[float]:
  """Sets and returns each trajectory's reward: 1.0 if the last \\boxed{} of the response
  equals the gold answer, else 0.0; a truncated response (stop_reason "length") scores 0.

  Also records `meta["pred"]` (the extracted answer or None) and `meta["grade_status"]`.
  """
  if len(trajectories) != len(golds):
    raise ValueError(f"{len(trajectories)} trajectories but {len(golds)} gold answers")
  futures = [None if t.truncated else grader.submit(g, t.text, response=True)
             for t, g in zip(trajectories, golds)]
  rewards = []
  for t, fut in zip(trajectories, futures):
    if fut is None:
      t.reward, status, pred = 0.0, "truncated", None
    else:
      res = fut.result()
      t.reward, status, pred = (1.0 if res.equal else 0.0), res.status, res.pred_extracted
    t.meta["pred"], t.meta["grade_status"] = pred, status
    rewards.append(t.reward)
  return rewards


# ------------------------------------------------------------------------------ metrics


def _mean(xs) -> float | None:
  xs = list(xs)
  return sum(xs) / len(xs) if xs else None


def response_metrics(trajectories: Sequence[Trajectory]) -> dict:
  """Accuracy and tool-use statistics of graded trajectories (docs/evaluation.md).

  accuracy: mean reward; code_rate: fraction with >= 1 cell; cells_per_answer: mean executed
  cells (`Trajectory.num_calls`) per response; cells_per_code_answer: the same over responses
  that used code; tool_error_rate: cells whose status is not "ok" over all cells (None when no
  cell ran); truncation_rate: fraction with stop_reason "length". Rates are in [0, 1].
  """
  ts = list(trajectories)
  if any(t.reward is None for t in ts):
    raise ValueError("response_metrics needs graded trajectories (reward is None)")
  cells = [c for t in ts for c in t.cells]
  errors = collections.Counter(c.status for c in cells if c.status != "ok")
  code = [t for t in ts if t.used_code]
  return {
      "n": len(ts),
      "accuracy": _mean(t.reward for t in ts),
      "code_rate": _mean(float(t.used_code) for t in ts),
      "cells_per_answer": _mean(t.num_calls for t in ts),
      "cells_per_code_answer": _mean(t.num_calls for t in code),
      "cells": len(cells),
      "tool_error_rate": (sum(errors.values()) / len(cells)) if cells else None,
      "tool_errors": dict(sorted(errors.items())),
      "truncation_rate": _mean(float(t.truncated) for t in ts),
      "mean_response_tokens": _mean(len(t.response_ids) for t in ts),
  }


def selection_metrics(native: Sequence[Trajectory], forced_code: Sequence[Trajectory],
                      forced_cot: Sequence[Trajectory]) -> dict:
  """Selection accuracy from per-problem aligned, graded trajectories (docs/evaluation.md).

  right choice: "cot" if the forced-reasoning response is correct, else "code" if the forced-code
  one is, else none (problem excluded). chosen: "code" if the native response used a cell.
  """
  if not len(native) == len(forced_code) == len(forced_cot):
    raise ValueError("selection_metrics: native / forced_code / forced_cot lengths differ")
  counts = collections.Counter()
  correct = eligible = 0
  for nat, code, cot in zip(native, forced_code, forced_cot):
    if nat.reward is None or code.reward is None or cot.reward is None:
      raise ValueError("selection_metrics needs graded trajectories (reward is None)")
    right = "cot" if cot.reward > 0 else ("code" if code.reward > 0 else None)
    chosen = "code" if nat.used_code else "cot"
    if right is None:
      counts["excluded"] += 1
      continue
    eligible += 1
    correct += right == chosen
    counts[f"right_{right}_chose_{chosen}"] += 1
  n = len(native)
  return {
      "n": n,
      "accuracy": correct / eligible if eligible else None,
      "eligible": eligible,
      "excluded_neither_solves": counts["excluded"],
      "right_cot": counts["right_cot_chose_cot"] + counts["right_cot_chose_code"],
      "right_code": counts["right_code_chose_cot"] + counts["right_code_chose_code"],
      "confusion": {k: counts[k] for k in ("right_cot_chose_cot", "right_cot_chose_code",
                                           "right_code_chose_cot", "right_code_chose_code")},
      "forced_code_accuracy": _mean(t.reward for t in forced_code),
      "forced_cot_accuracy": _mean(t.reward for t in forced_cot),
      "forced_code_used_code": _mean(float(t.used_code) for t in forced_code),
  }


def summarize(problems: Sequence[dict], passes: dict[str, list[list[Trajectory]]]) -> dict:
  """Summary of graded passes. `passes[name][i]` are the trajectories of problem i in that pass
  (PASSES names; missing passes are reported as None). Adds per-group breakdowns for the
  problem fields in GROUP_KEYS."""

  def block(idx: list[int]) -> dict:
    out = {}
    for name in ("greedy", "sampled"):
      if name in passes:
        out[name] = response_metrics([t for i in idx for t in passes[name][i]])
    if "sampled" in out:
      out["sampled"]["k"] = len(passes["sampled"][idx[0]]) if idx else 0
    if "forced_code" in passes and "forced_cot" in passes:
      out["selection"] = selection_metrics([passes["greedy"][i][0] for i in idx],
                                           [passes["forced_code"][i][0] for i in idx],
                                           [passes["forced_cot"][i][0] for i in idx])
    else:
      out["selection"] = None
    g = out.get("greedy") or {}
    out["accuracy"] = g.get("accuracy")
    out["code_rate"] = g.get("code_rate")
    out["selection_accuracy"] = out["selection"]["accuracy"] if out["selection"] else None
    if "sampled" in out:
      out["mean_at_k"] = out["sampled"]["accuracy"]
    return out

  all_idx = list(range(len(problems)))
  summary = {"num_problems": len(problems), **block(all_idx)}
  for key in GROUP_KEYS:
    groups = collections.defaultdict(list)
    for i, p in enumerate(problems):
      if p.get(key) is not None:
        groups[str(p[key])].append(i)
    if groups:
      summary[f"by_{key}"] = {g: {"num_problems": len(ix), **block(ix)}
                              for g, ix in sorted(groups.items())}
  return summary


# ------------------------------------------------------------------------------ running


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (temp file in the same directory, fsync, rename)."""
  fileio.write_json(path, obj)


def _check_problems(problems: Sequence[dict]) -> None:
  if not problems:
    raise ValueError("evaluate: no problems")
  for i, p in enumerate(problems):
    if not isinstance(p, dict) or not isinstance(p.get("problem"), str) or "answer" not in p:
      raise ValueError(f"evaluate: problem {i} needs 'problem' (str) and 'answer' fields")


def evaluate(engine, params, tokenizer, problems: Sequence[dict], grader, *,
             samples: int = 4, temperature: float = 0.6, top_p: float = 1.0,
             selection: bool = True,
             prompt_fn: Callable[[object, str], list[int]] | None = None,
             name: str | None = None, out_dir: str | None = None) -> dict:
  """Evaluates one benchmark; returns its summary (see module docstring, docs/evaluation.md).

  Args:
    engine: a `RolloutEngine` (or anything with its `run(params, requests, sampling)`, `cfg`
      and `tool_format`). The greedy passes run with its configured sampling if that is greedy,
      else with plain greedy sampling; the sampled pass with `temperature` and `top_p`.
    problems: [{"problem", "answer", optional "id", "family", "subject", "benchmark"}].
    grader: an `aci_jax.grading.Grader` (anything with `submit(gold, text, response=True)`).
    samples: k of mean@k (0: no sampled pass); temperature, top_p: its sampling.
    selection: run the two forced greedy passes and report selection accuracy.
    prompt_fn: (tokenizer, problem text) -> prompt ids; default `chat_prompt`.
    name: benchmark name for file names and meta (default: problems' "benchmark" or "eval").
    out_dir: if set, writes `<name>.trajectories.jsonl` and `<name>.summary.json` there.
  """
  t0 = time.perf_counter()
  _check_problems(problems)
  if samples < 0:
    raise ValueError(f"samples must be >= 0, got {samples}")
  prompt_fn = prompt_fn or chat_prompt
  name = name or str(problems[0].get("benchmark") or "eval")
  prompts = [list(prompt_fn(tokenizer, p["problem"])) for p in problems]
  prefix = list(tokenizer.encode(engine.tool_format.code_prefix)) if selection else []
  limit = engine.cfg.max_prompt_tokens
  # A prompt that does not fit the sampler (with the forced prefix) cannot be answered: it is
  # skipped and counted (`skipped_overlong`, its ids in `skipped_ids`), not allowed to abort
  # the whole evaluation; the metrics cover the problems that were run.
  fits = [i for i, ids in enumerate(prompts) if len(ids) + len(prefix) <= limit]
  fit_set = set(fits)
  skipped = [str(p.get("id", i)) for i, p in enumerate(problems) if i not in fit_set]
  if not fits:
    raise ValueError(f"evaluate: every prompt of {name!r} is over max_prompt_tokens={limit} "
                     f"(with the {len(prefix)}-token forced prefix)")
  if skipped:
    log.warning("evaluate %s: %d of %d prompts over max_prompt_tokens=%d are skipped",
                name, len(skipped), len(problems), limit)
    ids_of = {i: problems[i].get("id", i) for i in fits}
    problems = [{**problems[i], "id": ids_of[i]} for i in fits]
    prompts = [prompts[i] for i in fits]

  def meta(i: int, pass_name: str) -> dict:
    p = problems[i]
    m = {"benchmark": name, "problem_id": str(p.get("id", i)), "pass": pass_name,
         "gold": str(p["answer"])}
    m.update({k: p[k] for k in GROUP_KEYS if p.get(k) is not None})
    return m

  # Greedy native and both forced modes share one engine run (one batch stream, one compile).
  greedy = engine.cfg.sampling if engine.cfg.sampling.greedy else SamplingParams(greedy=True)
  reqs, tags = [], []
  for i, ids in enumerate(prompts):
    reqs.append(Request(ids, i, 0, mode="native", meta=meta(i, "greedy")))
    tags.append(("greedy", i))
    if selection:
      reqs.append(Request(ids, i, 0, mode="code", prefix_ids=list(prefix),
                          meta=meta(i, "forced_code")))
      tags.append(("forced_code", i))
      reqs.append(Request(ids, i, 0, mode="cot", ban=True, meta=meta(i, "forced_cot")))
      tags.append(("forced_cot", i))
  trajs = list(engine.run(params, reqs, greedy).trajectories)
  if samples:
    sreqs = [Request(ids, i, j, mode="native", meta={**meta(i, "sampled"), "sample": j})
             for i, ids in enumerate(prompts) for j in range(samples)]
    sampled = SamplingParams(temperature=temperature, top_p=top_p)
    trajs += list(engine.run(params, sreqs, sampled).trajectories)
    tags += [("sampled", i) for i in range(len(prompts)) for _ in range(samples)]
  if len(trajs) != len(tags):
    raise RuntimeError(f"engine returned {len(trajs)} trajectories for {len(tags)} requests")

  grade_trajectories(grader, trajs, [problems[i]["answer"] for _, i in tags])
  passes: dict[str, list[list[Trajectory]]] = {}
  for (pass_name, i), t in zip(tags, trajs):
    passes.setdefault(pass_name, [[] for _ in problems])[i].append(t)

  summary = {"benchmark": name, **summarize(problems, passes),
             "skipped_overlong": len(skipped), "skipped_ids": skipped}
  if "sampled" in passes:
    summary["sampled"].update(temperature=temperature, top_p=top_p)
  summary["wall_seconds"] = time.perf_counter() - t0
  if out_dir is not None and jax.process_index() == 0:  # every process holds the same records
    write_jsonl(os.path.join(out_dir, f"{name}.trajectories.jsonl"), trajs)
    write_json(os.path.join(out_dir, f"{name}.summary.json"), summary)
  return summary


def evaluate_benchmarks(engine, params, tokenizer, benchmarks: dict[str, Sequence[dict]], grader,
                        *, out_dir: str | None = None, **kw) -> dict:
  """`evaluate` on several named problem lists; writes `<out_dir>/summary.json` with all of them
  (plus the per-benchmark files). Returns {name: summary}."""
  out = {}
  for bname, problems in benchmarks.items():
    out[bname] = evaluate(engine, params, tokenizer, problems, grader, name=bname,
                          out_dir=out_dir, **kw)
  if out_dir is not None and jax.process_index() == 0:
    write_json(os.path.join(out_dir, "summary.json"), out)
  return out
