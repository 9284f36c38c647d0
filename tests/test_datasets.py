"""Benchmark loaders: the four local JSONL shapes, the registry, malformed lines (one-line errors
naming file:line), and the hub path failing fast offline / without `datasets`."""

import json
import sys
import time
import types

import pytest

from aci_jax.data import datasets as ds


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def test_math500_shape(tmp_path):
  p = _write(tmp_path / "math500.jsonl", [
      {"problem": "Convert $(0,3)$ to polar.", "solution": "... \\boxed{(3, \\frac{\\pi}{2})}",
       "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
       "unique_id": "test/precalculus/807.json"},
      {"problem": "What is $1+1$?", "solution": "So \\boxed{2}.", "answer": "2",
       "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
  ])
  out = ds.load_benchmark("math500", path=p)
  assert out[0] == {"problem": "Convert $(0,3)$ to polar.",
                    "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "benchmark": "math500",
                    "id": "test/precalculus/807.json", "subject": "Precalculus", "level": 2}
  assert out[1]["answer"] == "2" and out[1]["subject"] == "Algebra"


def test_math_solution_only_falls_back_to_the_last_box(tmp_path):
  p = _write(tmp_path / "m.jsonl",
             [{"problem": "x?", "solution": "a \\boxed{1} then \\boxed{\\frac{1}{2}}"}])
  assert ds.load_jsonl(p, "math500")[0]["answer"] == "\\frac{1}{2}"


def test_gsm8k_shape(tmp_path):
  p = _write(tmp_path / "gsm8k_test.jsonl", [
      {"question": "Janet has 3 ducks...", "answer": "She has <<3*6=18>>18.\n#### 18"},
      {"question": "Big number?", "answer": "It is 2,125.\n#### 2,125"},
      {"question": "Below zero?", "answer": "#### -4"},
  ])
  out = ds.load_benchmark("gsm8k", data_dir=str(tmp_path), hub=False)  # finds the file by name
  assert out == ds.load_jsonl(p, "gsm8k")
  assert [o["answer"] for o in out] == ["18", "2125", "-4"]
  assert [o["id"] for o in out] == ["0", "1", "2"]
  assert out[0]["problem"] == "Janet has 3 ducks..." and out[0]["benchmark"] == "gsm8k"


def test_aime_and_amc_shapes(tmp_path):
  aime = _write(tmp_path / "aime24.jsonl", [
      {"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "question": "Find x."},
      {"id": 67, "problem": "Find y.", "solution": "...", "answer": "025", "question": "Find y."},
      {"id": 68, "problem": "Find z.", "answer": "000"},
  ])
  assert [(o["id"], o["answer"]) for o in ds.load_jsonl(aime, "aime24")] == [
      ("60", "204"), ("67", "25"), ("68", "0")]
  amc = _write(tmp_path / "amc23.jsonl", [
      {"id": 0, "problem": "Cities...", "answer": 27.0, "question": "Cities..."},
      {"id": 1, "question": "Only a question field", "answer": 3159.0},
      {"id": 2, "problem": "Half?", "answer": 0.5},
  ])
  out = ds.load_jsonl(amc, "amc23")
  assert [o["answer"] for o in out] == ["27", "3159", "0.5"]
  assert out[1]["problem"] == "Only a question field"


def test_generic_shape_and_limit(tmp_path):
  p = _write(tmp_path / "mine.jsonl", [
      {"question": "q1", "answer": 7}, "", {"problem": "q2", "answer": "x^2", "family": "add"}])
  out = ds.load_jsonl(p)
  assert [(o["problem"], o["answer"], o["benchmark"]) for o in out] == [
      ("q1", "7", "mine"), ("q2", "x^2", "mine")]
  assert out[1]["family"] == "add"
  assert len(ds.load_jsonl(p, limit=1)) == 1


@pytest.mark.parametrize("line, message", [
    ('{"answer": "3"}', r"bad\.jsonl:2: missing field 'problem' or 'question'"),
    ('{"problem": "p"}', r"bad\.jsonl:2: missing field 'answer'"),
    ('{"problem": "p", "answer": [1, 2]}', r"bad\.jsonl:2: field 'answer': .*string or number"),
    ('{"problem": "", "answer": "1"}', r"bad\.jsonl:2: field 'problem' must be a non-empty"),
    ('{"problem": "p", "answer": "  "}', r"bad\.jsonl:2: field 'answer': answer is empty"),
    ('{"problem": "p", "answer": NaN}', r"bad\.jsonl:2: field 'answer': answer is not finite"),
    ('["problem", "answer"]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"problem": "p", "answer": "1"', r"bad\.jsonl:2: not valid JSON"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
  p = _write(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, line])
  with pytest.raises(ds.DatasetError, match=message) as e:
    ds.load_jsonl(p)
  assert "\n" not in str(e.value)


def test_gsm8k_answer_without_marker_is_an_error(tmp_path):
  p = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "just 18"}])
  with pytest.raises(ds.DatasetError, match=r"g\.jsonl:1: field 'answer': .*'#### N'"):
    ds.load_jsonl(p, "gsm8k")


def test_missing_and_empty_files_and_unknown_benchmark(tmp_path):
  with pytest.raises(ds.DatasetError, match="no such file"):
    ds.load_jsonl(str(tmp_path / "nope.jsonl"))
  with pytest.raises(ds.DatasetError, match="no problems"):
    ds.load_jsonl(_write(tmp_path / "empty.jsonl", [""]))
  with pytest.raises(ds.DatasetError, match="unknown benchmark 'mathh'"):
    ds.load_benchmark("mathh", path="x")
  with pytest.raises(ds.DatasetError, match="no local file .* hub loading is disabled"):
    ds.load_benchmark("aime24", data_dir=str(tmp_path), hub=False)


def test_registry_has_the_four_benchmarks():
  assert {"math500", "gsm8k", "aime24", "amc23"} <= set(ds.BENCHMARKS)
  assert ds.BENCHMARKS["gsm8k"].answer_style == "gsm8k"
  assert ds.BENCHMARKS["gsm8k"].hub_config == "main"
  assert ds.BENCHMARKS["math500"].subject_field == "subject"


def test_hub_offline_fails_fast(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  t0 = time.monotonic()
  with pytest.raises(ds.DatasetError, match=r"openai/gsm8k: offline \(HF_HUB_OFFLINE is set\)"):
    ds.load_benchmark("gsm8k")
  assert time.monotonic() - t0 < 5


def test_hub_without_datasets_package(monkeypatch):
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
  with pytest.raises(ds.DatasetError, match="needs the 'datasets' package"):
    ds.load_hub("math500")


def test_hub_unreachable_fails_fast(monkeypatch):
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  fake = types.ModuleType("datasets")
  fake.load_dataset = lambda *a, **k: pytest.fail("must not be called when unreachable")
  monkeypatch.setitem(sys.modules, "datasets", fake)
  monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
  t0 = time.monotonic()
  with pytest.raises(ds.DatasetError, match=r"hub not reachable .*127\.0\.0\.1:9"):
    ds.load_hub("math500", probe_timeout=2.0)
  assert time.monotonic() - t0 < 10


def test_hub_rows_are_mapped_like_local_files(monkeypatch):
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  calls = []
  rows = [{"question": "q", "answer": "work\n#### 1,000"}, {"question": "r", "answer": "#### 3"}]

  def load_dataset(path, name=None, split=None):
    calls.append((path, name, split))
    return rows

  fake = types.ModuleType("datasets")
  fake.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", fake)
  monkeypatch.setattr(ds, "_hub_reachable", lambda timeout: None)
  out = ds.load_benchmark("gsm8k", limit=5)
  assert calls == [("openai/gsm8k", "main", "test")]
  assert [(o["problem"], o["answer"]) for o in out] == [("q", "1000"), ("r", "3")]
  # Errors from the library become one line naming the dataset and split.
  fake.load_dataset = lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("no such\nthing"))
  with pytest.raises(ds.DatasetError, match=r"^openai/gsm8k \[test\]: FileNotFoundError: no such$"):
    ds.load_benchmark("gsm8k")
  rows[:] = [{"question": "q"}]
  fake.load_dataset = load_dataset
  with pytest.raises(ds.DatasetError, match=r"openai/gsm8k \[test\] row 0: missing field 'answer'"):
    ds.load_benchmark("gsm8k")
