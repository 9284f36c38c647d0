"""Evaluation / training problem sets: local JSONL or the Hugging Face hub -> problem dicts.

Every loader returns the same record, whatever the source's shape:

    {"problem": str, "answer": str, "benchmark": str, "id": str,
     "subject": str (when the source has one), "level": ... (when the source has one)}

`answer` is the reference answer as a string ready for `aci_jax.grading` (gold style "auto"):
GSM8K's worked solution becomes the number after `####` (thousands commas dropped), AMC's JSON
floats such as 27.0 become "27", AIME's zero-padded "025" becomes "25", a MATH record without an
`answer` field falls back to the last \\boxed{} of its `solution`.

    problems = load_benchmark("math500", path="data/math500.jsonl")
    problems = load_benchmark("gsm8k")            # hub (online only; never hangs offline)
    problems = load_jsonl("mine.jsonl")           # any file with problem|question + answer

A malformed line raises `DatasetError` with one line naming file:line and the problem.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import urllib.parse

from aci_jax import fileio
from aci_jax.grading import extract_gold


class DatasetError(ValueError):
  """A data source that cannot be used; the message is one line naming the source."""


ANSWER_STYLES = ("auto", "math", "gsm8k", "aime", "amc", "plain")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """Where a benchmark lives and how its fields map onto the problem record."""
  name: str
  problem_fields: tuple[str, ...] = ("problem", "question")  # first present wins
  answer_fields: tuple[str, ...] = ("answer",)  # first present wins
  answer_style: str = "auto"  # see normalize_answer
  subject_field: str | None = None
  level_field: str | None = None
  id_field: str | None = None
  hub_id: str | None = None
  hub_config: str | None = None
  hub_split: str = "test"
  file_name: str | None = None  # default file name inside a data directory


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in (
    BenchmarkSpec("math500", answer_fields=("answer", "solution"), answer_style="math",
                  subject_field="subject", level_field="level", id_field="unique_id",
                  hub_id="HuggingFaceH4/MATH-500", hub_split="test", file_name="math500.jsonl"),
    BenchmarkSpec("gsm8k", problem_fields=("question", "problem"), answer_style="gsm8k",
                  hub_id="openai/gsm8k", hub_config="main", hub_split="test",
                  file_name="gsm8k_test.jsonl"),
    BenchmarkSpec("aime24", answer_style="aime", id_field="id", hub_id="HuggingFaceH4/aime_2024",
                  hub_split="train", file_name="aime24.jsonl"),
    BenchmarkSpec("amc23", problem_fields=("problem", "question"), answer_style="amc",
                  id_field="id", hub_id="math-ai/amc23", hub_split="test",
                  file_name="amc23.jsonl"),
)}


def normalize_answer(value, style: str = "auto") -> str:
  """Reference answer -> string for the grader. Raises ValueError on an unusable value."""
  if style not in ANSWER_STYLES:
    raise ValueError(f"unknown answer style {style!r}; expected one of {ANSWER_STYLES}")
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise ValueError(f"answer must be a string or number, got {type(value).__name__}")
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ValueError(f"answer is not finite: {value!r}")
    # AMC23 stores integers as JSON floats (27.0); a fraction stays as Python writes it.
    return str(int(value)) if value.is_integer() else repr(value)
  if isinstance(value, int):
    return str(value)
  text = value.strip()
  if style == "gsm8k":
    if "####" not in text:
      raise ValueError("GSM8K answer has no '#### N' line")
    text = extract_gold(text, "gsm8k")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
      text = text.replace(",", "")
  elif style == "math":
    text = extract_gold(text, "math")
  elif style in ("auto", "aime", "amc"):
    text = extract_gold(text, "auto")
  if style in ("aime", "amc", "auto") and re.fullmatch(r"0\d+", text):
    text = text.lstrip("0") or "0"  # AIME answers are integers 000-999 written zero-padded
  if style == "amc" and re.fullmatch(r"-?\d+\.0+", text):
    text = text.split(".")[0]
  if not text:
    raise ValueError("answer is empty")
  return text


def _first(rec: dict, fields: tuple[str, ...]):
  for f in fields:
    if f in rec and rec[f] is not None:
      return f, rec[f]
  return None, None


def to_problem(rec: dict, spec: BenchmarkSpec, index: int) -> dict:
  """One source record -> the problem record (module docstring). Raises ValueError."""
  if not isinstance(rec, dict):
    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
  pf, problem = _first(rec, spec.problem_fields)
  if pf is None:
    raise ValueError(f"missing field {' or '.join(map(repr, spec.problem_fields))}")
  if not isinstance(problem, str) or not problem.strip():
    raise ValueError(f"field {pf!r} must be a non-empty string")
  af, answer = _first(rec, spec.answer_fields)
  if af is None:
    raise ValueError(f"missing field {' or '.join(map(repr, spec.answer_fields))}")
  style = "math" if af == "solution" else spec.answer_style
  try:
    gold = normalize_answer(answer, style)
  except ValueError as e:
    raise ValueError(f"field {af!r}: {e}") from None
  out = {"problem": problem, "answer": gold, "benchmark": spec.name}
  ident = rec.get(spec.id_field) if spec.id_field else None
  out["id"] = str(ident) if ident is not None else str(index)
  if spec.subject_field and rec.get(spec.subject_field) is not None:
    out["subject"] = str(rec[spec.subject_field])
  if spec.level_field and rec.get(spec.level_field) is not None:
    out["level"] = rec[spec.level_field]
  if "family" in rec:  # toy problems written to JSONL keep their breakdown key
    out["family"] = str(rec["family"])
  return out


def _spec(benchmark: str | BenchmarkSpec | None, path: str | None = None) -> BenchmarkSpec:
  if isinstance(benchmark, BenchmarkSpec):
    return benchmark
  if benchmark is None:
    name = os.path.splitext(os.path.basename(path))[0] if path else "custom"
    return BenchmarkSpec(name)
  if benchmark not in BENCHMARKS:
    raise DatasetError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)} "
                       "(or pass a BenchmarkSpec)")
  return BENCHMARKS[benchmark]


def load_jsonl(path: str, benchmark: str | BenchmarkSpec | None = None, *,
               limit: int | None = None) -> list[dict]:
  """Reads a JSONL file of problems (local or gs://) with schema checks, one record per line.

  `benchmark` picks the field mapping (a registry name or a spec); None accepts the generic
  shape (`problem` or `question`, and `answer`). `limit` keeps the first N records.
  """
  spec = _spec(benchmark, path)
  if not fileio.isfile(path):  # local or gs://
    raise DatasetError(f"{path}: no such file")
  out = []
  try:
    for lineno, rec in fileio.iter_jsonl(path):
      if limit is not None and len(out) >= limit:
        break
      try:
        out.append(to_problem(rec, spec, len(out)))
      except ValueError as e:
        raise DatasetError(f"{path}:{lineno}: {e}") from None
  except fileio.DataError as e:
    raise DatasetError(str(e)) from None
  if not out:
    raise DatasetError(f"{path}: no problems")
  return out


def _offline() -> str | None:
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
      return var
  return None


def _hub_reachable(timeout: float) -> str | None:
  """None if a TCP connection to the hub endpoint opens within `timeout` s, else the reason."""
  url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
  try:
    socket.create_connection((host, port), timeout=timeout).close()
  except OSError as e:
    return f"{host}:{port} unreachable ({type(e).__name__}: {e})"
  return None


def load_hub(benchmark: str | BenchmarkSpec, *, split: str | None = None,
             limit: int | None = None, probe_timeout: float = 3.0) -> list[dict]:
  """Loads a benchmark from the Hugging Face hub with `datasets.load_dataset`.

  Fails fast with a one-line `DatasetError` instead of hanging: offline mode set, the
  `datasets` package missing, or the hub not reachable within `probe_timeout` seconds.
  """
  spec = _spec(benchmark)
  if not spec.hub_id:
    raise DatasetError(f"benchmark {spec.name!r} has no hub id; pass a local JSONL path")
  why = _offline()
  if why:
    raise DatasetError(f"{spec.hub_id}: offline ({why} is set); pass a local JSONL path")
  try:
    import datasets  # optional, heavy: only the hub path needs it
  except ImportError:
    raise DatasetError(f"{spec.hub_id}: loading from the hub needs the 'datasets' package "
                       "(pip install datasets), or pass a local JSONL path") from None
  why = _hub_reachable(probe_timeout)
  if why:
    raise DatasetError(f"{spec.hub_id}: hub not reachable ({why}); pass a local JSONL path")
  split = split or spec.hub_split
  try:
    rows = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
  except Exception as e:  # the library raises many types; the caller needs one line
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise DatasetError(f"{spec.hub_id} [{split}]: {type(e).__name__}: {msg}") from None
  out = []
  for i, rec in enumerate(rows):
    if limit is not None and len(out) >= limit:
      break
    try:
      out.append(to_problem(dict(rec), spec, i))
    except ValueError as e:
      raise DatasetError(f"{spec.hub_id} [{split}] row {i}: {e}") from None
  if not out:
    raise DatasetError(f"{spec.hub_id} [{split}]: no problems")
  return out


def load_benchmark(name: str, *, path: str | None = None, data_dir: str | None = None,
                   hub: bool = True, limit: int | None = None) -> list[dict]:
  """A registered benchmark: from `path`, else `data_dir/<file_name>` if it exists, else the hub
  (when `hub` is True)."""
  spec = _spec(name)
  if path is None and data_dir is not None and spec.file_name:
    candidate = fileio.join(data_dir, spec.file_name)
    if fileio.isfile(candidate):
      path = candidate
  if path is not None:
    return load_jsonl(path, spec, limit=limit)
  if not hub:
    raise DatasetError(f"benchmark {name!r}: no local file (data_dir={data_dir!r}) and hub "
                       "loading is disabled")
  return load_hub(spec, limit=limit)
