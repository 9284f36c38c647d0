"""Files a user keeps: written atomically, read with one-line errors.

Every result file of a run (summaries, trajectories, demonstrations, progress) goes through
`atomic_open`: the data is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the target, so a crash or a kill leaves the old file or the complete
new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Iterable, Iterator


class DataError(ValueError):
  """A malformed data file; the message names the file and line."""


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8"):
  """`with atomic_open(p) as f:` -- `p` appears only if the block completes."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=d)
  try:
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, default=float)
    f.write("\n")


def write_jsonl(path: str, records: Iterable[Any]) -> str:
  with atomic_open(path) as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return path


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) for each non-blank line of `path` ("-" = stdin); DataError names
  file:line for anything that is not a JSON object."""
  if path != "-" and not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  with (contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8")) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
      yield lineno, obj
