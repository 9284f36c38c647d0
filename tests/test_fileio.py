"""Atomic writes keep the old file on failure; JSONL errors name file:line."""

import json

import pytest

from aci_jax import fileio


def test_atomic_open_keeps_the_old_file_when_the_write_fails(tmp_path):
  p = tmp_path / "summary.json"
  fileio.write_json(str(p), {"a": 1})
  with pytest.raises(RuntimeError):
    with fileio.atomic_open(str(p)) as f:
      f.write('{"a": 2, "half')
      raise RuntimeError("killed mid-write")
  assert json.loads(p.read_text()) == {"a": 1}
  assert [x.name for x in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


def test_iter_jsonl_errors_name_the_line(tmp_path):
  p = tmp_path / "x.jsonl"
  p.write_text('{"a": 1}\n\n[1, 2]\n')
  with pytest.raises(fileio.DataError, match=r"x\.jsonl:3: expected a JSON object"):
    list(fileio.iter_jsonl(str(p)))
  p.write_text('{"a": 1}\n{"a": \n')
  with pytest.raises(fileio.DataError, match=r"x\.jsonl:2: not valid JSON"):
    list(fileio.iter_jsonl(str(p)))
  with pytest.raises(fileio.DataError, match="no such file"):
    list(fileio.iter_jsonl(str(tmp_path / "missing.jsonl")))
  p.write_text('{"a": 1}\n\n{"b": 2}\n')
  assert list(fileio.iter_jsonl(str(p))) == [(1, {"a": 1}), (3, {"b": 2})]
