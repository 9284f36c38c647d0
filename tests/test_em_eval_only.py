"""An evaluation-only run (em.iterations=0) needs no training pool; an EM run says it needs one."""

import json
import os
import runpy

import pytest

from aci_jax.em import modes
from aci_jax.configuration import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, iterations):
  c = runpy.run_path(os.path.join(ROOT, "configs", "smollm2_cpu.py"))["get_config"]()
  ev = tmp_path / "ev.jsonl"
  ev.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
  with c.unlocked():
    c.em.iterations = iterations
    c.task.train_path = ""
    c.task.eval_paths.gsm8k = ""
    c.task.eval_paths.math500 = str(ev)
  return c


def test_eval_only_needs_no_train_path(tmp_path):
  train, evals = modes._problems(_config(tmp_path, 0))
  assert train == [] and [p["answer"] for p in evals["math500"]] == ["2"]


def test_em_run_without_train_path_is_one_clear_error(tmp_path):
  with pytest.raises(ConfigError, match=r"task.train_path: required for EM iterations "
                                        r"\(em.iterations=1\).*em.iterations=0"):
    modes._problems(_config(tmp_path, 1))
